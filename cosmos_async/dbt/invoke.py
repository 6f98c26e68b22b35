"""Run dbt against a project, without writing into the project directory.

One path builds the arguments; dbt then runs in-process (dbtRunner, the default) or as a subprocess of a dbt
executable (:class:`~cosmos_async.dbt.executable.DbtSubprocess`).

dbt's target/ and logs/ go to a private temporary directory; when packages must be installed the project is
copied there first, so a read-only DAGs folder works. Secrets reach dbt only through the environment.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cosmos_async.config import ProfileConfig
from cosmos_async.dbt.executable import DbtSubprocess
from cosmos_async.dbt.partial_parse import keep, restore
from cosmos_async.errors import CosmosAsyncError
from cosmos_async.profiles import dbt_profile, resolve_target

_IGNORED_COPY = shutil.ignore_patterns("target", "logs", "dbt_packages", ".git", "__pycache__")


class DbtCommandError(CosmosAsyncError):
    """dbt reported a failure; the message carries dbt's own error text."""


@dataclass
class DbtWorkspace:
    """A prepared place to run dbt: project dir, profiles dir, target dir and the env to run with."""

    project_dir: Path
    profiles_dir: Path
    target_dir: Path
    env: dict[str, str]
    profile_config: ProfileConfig

    def args(self, command: Sequence[str], dbt_vars: Mapping[str, Any] | None = None,
             global_flags: Sequence[str] = ()) -> list[str]:
        args = [*global_flags, *command, "--project-dir", str(self.project_dir),
                "--profiles-dir", str(self.profiles_dir), "--profile", self.profile_config.profile_name,
                "--target", self.profile_config.target_name, "--target-path", str(self.target_dir)]
        if dbt_vars:
            args += ["--vars", json.dumps(dict(dbt_vars))]
        return args


@contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """``env`` set in this process for the block (the profile's ``env_var()`` and in-process dbt read it)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def dbt_workspace(project_dir: Path, profile_config: ProfileConfig, *, install_deps: bool = False,
                  env: Mapping[str, str] | None = None, target: Mapping[str, Any] | None = None,
                  runner: DbtSubprocess | None = None,
                  partial_parse: Path | None = None) -> Iterator[DbtWorkspace]:
    """Prepare a workspace for one or more dbt commands and clean it up afterwards.

    ``runner`` runs ``dbt deps`` when packages must be installed (None: in-process).
    ``target`` replaces the profile's resolved target (the capture points dbt at its recording endpoint).
    ``partial_parse`` is where dbt's partial-parse state is kept between runs
    (:func:`cosmos_async.dbt.partial_parse.state_file`); None parses in full every time.
    """
    project_dir = Path(project_dir)
    if not (project_dir / "dbt_project.yml").is_file():
        raise CosmosAsyncError(f"no dbt_project.yml in {project_dir}; fix ProjectConfig(dbt_project_path=...).")
    if target is None:
        # Inside ``env``: a profiles.yml may read operator_args env values (seed 001's DBT_* variables).
        with environment(env or {}):
            target = resolve_target(profile_config)
    with tempfile.TemporaryDirectory(prefix="cosmos-async-dbt-") as tmp, dbt_profile(profile_config, target) as (
        profiles_dir, secret_env
    ):
        work = Path(tmp)
        needs_deps = install_deps and any((project_dir / f).is_file() for f in ("packages.yml", "dependencies.yml"))
        if needs_deps:
            shutil.copytree(project_dir, work / "project", ignore=_IGNORED_COPY, symlinks=True)
            project_dir = work / "project"
        # dbt's log file would go to this private directory and be deleted unread: it is not written (its
        # debug-level records cost ~8 % of a capture's CPU); dbt's console output still reaches the task log.
        run_env = {"DBT_LOG_LEVEL_FILE": "none", **(env or {}), **secret_env, "DBT_LOG_PATH": str(work / "logs"),
                   "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
        workspace = DbtWorkspace(project_dir, profiles_dir, work / "target", run_env, profile_config)
        restore(partial_parse, workspace.target_dir)
        with environment(run_env):
            if needs_deps:
                invoke(workspace, ["deps"], runner=runner)
            try:
                yield workspace
            finally:  # dbt writes the state once it has parsed, whatever the command's outcome
                keep(workspace.target_dir, partial_parse)


def invoke(workspace: DbtWorkspace, command: Sequence[str], dbt_vars: Mapping[str, Any] | None = None,
           callbacks: Sequence[Callable[[Any], None]] = (), *, global_flags: Sequence[str] = (),
           runner: DbtSubprocess | None = None) -> Any:
    """Run one dbt command, in-process or with ``runner``; raise :class:`DbtCommandError` with dbt's messages
    when it fails. In-process it returns dbt's result; through a subprocess, None."""
    args = workspace.args(command, dbt_vars, global_flags)
    if runner is not None:
        code, tail = runner.run(args, workspace.env)
        if code == 0:
            return None
        output = "\n".join(line for line in tail if line.strip())
        raise DbtCommandError(f"dbt {' '.join(command)} failed (exit {code}): {output}")
    result = _run(args, callbacks)
    if result.success:
        return result
    raise DbtCommandError(f"dbt {' '.join(command)} failed: {_failure_text(result)}")


@dataclass(frozen=True)
class NodeOutcome:
    """How one node ended in a dbt command that is allowed to fail node by node."""

    unique_id: str
    selector: str
    status: str  # success / error / skipped / pass / fail / warn
    message: str


def parsed_manifest(workspace: DbtWorkspace, dbt_vars: Mapping[str, Any] | None = None) -> Any:
    """``dbt parse`` in this process, writing no JSON artifacts: dbt's own Manifest object, for
    :func:`node_outcomes` to reuse (dbtRunner's documented ``manifest`` argument) instead of parsing again.
    dbt still keeps its partial-parse state in the target dir."""
    return _ran(workspace, ["parse", "--no-write-json"], dbt_vars).result


def node_outcomes(workspace: DbtWorkspace, command: Sequence[str], dbt_vars: Mapping[str, Any] | None = None,
                  callbacks: Sequence[Callable[[Any], None]] = (), manifest: Any = None) -> list[NodeOutcome]:
    """Run a dbt command and report each node's outcome; raise only when dbt itself could not run.

    ``manifest``: dbt's Manifest from :func:`parsed_manifest`, used instead of parsing the project again."""
    result = _ran(workspace, command, dbt_vars, callbacks, manifest)
    outcomes = []
    for node_result in getattr(result.result, "results", None) or ():
        node = node_result.node
        selector = node.name if node.resource_type == "test" else "fqn:" + ".".join(node.fqn)
        outcomes.append(NodeOutcome(node.unique_id, selector, str(node_result.status).lower(),
                                    str(node_result.message or "")))
    return outcomes


def node_results(workspace: DbtWorkspace, command: Sequence[str], dbt_vars: Mapping[str, Any] | None,
                 manifest: Any, global_flags: Sequence[str] = ()) -> list[Any]:
    """dbt's own result list of an in-process command on dbt's Manifest (``dbt ls``: one line per node)."""
    return list(_ran(workspace, command, dbt_vars, manifest=manifest, global_flags=global_flags).result or ())


def _ran(workspace: DbtWorkspace, command: Sequence[str], dbt_vars: Mapping[str, Any] | None,
         callbacks: Sequence[Callable[[Any], None]] = (), manifest: Any = None,
         global_flags: Sequence[str] = ()) -> Any:
    """dbt's result of one in-process command; raise when dbt itself could not run it (not for node failures)."""
    result = _run(workspace.args(command, dbt_vars, global_flags), callbacks, manifest)
    if result.exception is not None or result.result is None:
        raise DbtCommandError(f"dbt {' '.join(command)} could not run: {_failure_text(result)}")
    return result


def _run(args: list[str], callbacks: Sequence[Callable[[Any], None]], manifest: Any = None) -> Any:
    from dbt.cli.main import dbtRunner

    return dbtRunner(manifest=manifest, callbacks=list(callbacks)).invoke(args)


def _failure_text(result: Any) -> str:
    if result.exception is not None:
        return str(result.exception)
    messages = []
    for node_result in getattr(result.result, "results", None) or ():
        if str(getattr(node_result, "status", "")).lower() in ("error", "fail", "runtime error"):
            node = getattr(node_result, "node", None)
            name = getattr(node, "unique_id", "?")
            messages.append(f"{name}: {node_result.message}")
    return "; ".join(messages) or "see the dbt output above"
