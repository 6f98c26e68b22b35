"""Load a project without a manifest: run ``dbt ls`` once and cache its manifest by project checksum, or read
a file of ``dbt ls --output json`` lines (LoadMode.DBT_LS_FILE).

The dag-processor re-parses DAG files every few seconds; running dbt each time would cost seconds per parse.
The cache key covers everything that changes the graph (project files, vars, env, profile target, dbt
version), so an edit to a model or a var invalidates it and nothing else does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from cosmos_async.config import ProfileConfig, cache_dir
from cosmos_async.errors import ConfigurationError, ManifestError
from cosmos_async.project.manifest import RUNNABLE_TYPES, DbtNode, Manifest, load_manifest, node_from_dict

logger = logging.getLogger(__name__)

# Directories dbt writes or downloads into: their content never changes the project's graph definition.
_SKIPPED_DIRS = frozenset({"target", "logs", "dbt_packages", ".git", "__pycache__", ".venv"})
_GRAPH_SUFFIXES = frozenset({".sql", ".yml", ".yaml", ".csv", ".py", ".md", ".json"})


def project_checksum(project_dir: Path, profile: ProfileConfig, dbt_vars: Mapping[str, Any],
                     env: Mapping[str, str], dbt_executable: str | Path | None = None) -> str:
    """A digest of what determines the graph ``dbt ls`` would produce."""
    digest = hashlib.sha256()
    for path in sorted(_graph_files(project_dir)):
        digest.update(str(path.relative_to(project_dir)).encode() + b"\0" + path.read_bytes() + b"\0")
    settings = {"profile": profile.profile_name, "target": profile.target_name, "vars": dict(dbt_vars),
                "env": dict(env), "dbt": str(dbt_executable) if dbt_executable else _dbt_version()}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _graph_files(project_dir: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(project_dir):
        dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS]
        files += [Path(root) / n for n in names if Path(n).suffix in _GRAPH_SUFFIXES]
    return files


def _dbt_version() -> str:
    try:
        return metadata.version("dbt-core")
    except metadata.PackageNotFoundError:
        return "absent"


def load_with_dbt_ls(project_dir: Path, profile: ProfileConfig, *, dbt_vars: Mapping[str, Any] | None = None,
                     env: Mapping[str, str] | None = None, install_deps: bool = False,
                     dbt_executable: str | Path | None = None) -> Manifest:
    """The project's graph from a cached ``dbt ls`` manifest, running dbt only when the project changed.

    ``dbt_executable`` (ExecutionConfig.dbt_executable_path) runs that dbt as a subprocess; else dbt runs
    in-process. A variable dbt needs but was not given fails with a message saying where to give it.
    """
    from cosmos_async.profiles import parse_time_target

    dbt_vars, env = dict(dbt_vars or {}), dict(env or {})
    target, placeholders = parse_time_target(profile, env)
    # Which variables were stood in for is part of what the graph was computed from.
    key = project_checksum(Path(project_dir), profile, dbt_vars, {**env, "\0placeholders": ",".join(placeholders)},
                           dbt_executable)
    cached = cache_dir() / f"manifest-{key}.json"
    if cached.is_file():
        return _without_relations(load_manifest(cached, cache=cache_dir()), placeholders)

    from cosmos_async.dbt_executable import DbtSubprocess
    from cosmos_async.dbt_invoke import DbtCommandError, dbt_workspace, invoke

    if placeholders:
        logger.info("dbt ls at DAG parse: %s set only when tasks run (operator_args env); parsing with "
                    "placeholders for them, so nodes get no Airflow asset", ", ".join(placeholders))
    runner = DbtSubprocess(dbt_executable) if dbt_executable else None
    with dbt_workspace(Path(project_dir), profile, install_deps=install_deps, env=env, runner=runner,
                       target=target) as workspace:
        try:
            invoke(workspace, ["ls", "--output", "json", "--quiet"], dbt_vars, runner=runner)
        except DbtCommandError as exc:
            raise _missing_variable(exc) or exc from None
        produced = workspace.target_dir / "manifest.json"
        manifest = load_manifest(produced)
        cached.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a concurrent parser never reads a half-written cache file.
        partial = cached.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(produced.read_bytes())
        partial.replace(cached)
    return _without_relations(manifest, placeholders)


def _without_relations(manifest: Manifest, placeholders: list[str]) -> Manifest:
    """With placeholders in the parse-time profile, node database/schema may be placeholders too: drop them
    (those nodes emit no Airflow asset) rather than name assets after a relation that does not exist."""
    if not placeholders:
        return manifest
    nodes = [dataclasses.replace(n, database=None, schema=None) for n in manifest.nodes.values()]
    return dataclasses.replace(manifest, nodes={n.unique_id: n for n in nodes})


# dbt's own wording for an env_var() / var() without a default and without a value.
_MISSING_ENV = re.compile(r"Env var required but not provided: '([^']+)'")
_MISSING_VAR = re.compile(r"Required var '([^']+)' not found")


def _missing_variable(error: Exception) -> ConfigurationError | None:
    """The parse-time error for a variable `dbt ls` needed, naming it and where parse-time values come from."""
    text = str(error)
    env, var = _MISSING_ENV.search(text), _MISSING_VAR.search(text)
    if env is None and var is None:
        return None
    what = f"env var {env.group(1)!r}" if env else f"dbt var {var.group(1)!r}"  # type: ignore[union-attr]
    where = "ProjectConfig(env_vars={...})" if env else "ProjectConfig(dbt_vars={...})"
    return ConfigurationError(
        f"`dbt ls` at DAG parse needs {what}, which is not set. The DAG has no manifest, so dbt parses the project "
        f"when the DAG file is parsed, before any task runs: operator_args env/vars and their run-time templates "
        f"({{{{ var.value... }}}}) are only applied when tasks run. Give a parse-time value in {where} (or the "
        "dag-processor's environment), give it a default in the project, or set ProjectConfig(manifest_path=...) "
        f"so parsing needs no dbt. dbt said: {text}"
    )


def load_dbt_ls_file(path: Path, project_name: str | None = None) -> Manifest:
    """The graph from a file of ``dbt ls --output json`` lines (LoadMode.DBT_LS_FILE).

    dbt's default JSON keys carry no ``fqn``, database or schema: a line without ``fqn`` gets the one dbt
    derives from the file's path (package, folders below the resource path, name), and nodes without
    database/schema emit no Airflow asset. ``dbt ls --output json --output-keys ...`` adding ``fqn``,
    ``database`` and ``schema`` gives exact values. Project hooks are not in ``dbt ls`` output.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ManifestError(f"RenderConfig(dbt_ls_path={str(path)!r}) cannot be read ({exc}); write it with "
                            "`dbt ls --output json > file`.") from None
    nodes: list[DbtNode] = []
    for number, line in enumerate(lines, 1):
        if not line.strip().startswith("{"):
            continue  # dbt's log lines, when --quiet was not used
        try:
            raw = json.loads(line)
            if raw.get("resource_type") in RUNNABLE_TYPES | {"source"}:
                nodes.append(node_from_dict({**raw, "fqn": raw.get("fqn") or _derived_fqn(raw)}))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ManifestError(f"{path}:{number} is not a `dbt ls --output json` line ({exc}); regenerate the "
                                "file with `dbt ls --output json`.") from None
    if not nodes:
        raise ManifestError(f"{path} holds no dbt ls JSON line; write it with `dbt ls --output json --quiet`.")
    return Manifest.from_nodes(nodes, _root_package(nodes, project_name))


def _derived_fqn(raw: Mapping[str, Any]) -> list[str]:
    folders = Path(raw["original_file_path"]).parts[1:-1]
    if raw["resource_type"] == "source":
        return [raw["package_name"], *folders, raw["source_name"], raw["name"]]
    return [raw["package_name"], *folders, raw["name"]]


def _root_package(nodes: list[DbtNode], project_name: str | None) -> str:
    """The project's package: the only one with models, else ``project_name`` (installed packages have some)."""
    packages = {n.package_name for n in nodes if n.resource_type == "model"}
    if len(packages) == 1:
        return packages.pop()
    if project_name in packages:
        return project_name
    raise ConfigurationError(f"the dbt ls file holds models of the packages {', '.join(sorted(packages))}: set "
                             "ProjectConfig(project_name=...) to the one that is your project.")
