"""The setup task of an AIRFLOW_ASYNC run: capture every node's statements once, upload them for this run."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from cosmos_async.config import ProfileConfig, capture_processes
from cosmos_async.dbt.partial_parse import state_file
from cosmos_async.errors import ConfigurationError


def dbt_installed() -> bool:
    """True when dbt-core and dbt-bigquery can be imported here.

    Not just ``find_spec("dbt")``: ``dbt`` is a namespace package that dbt-common or dbt-adapters alone provide.
    """
    if importlib.util.find_spec("dbt") is None:
        return False
    try:
        metadata.version("dbt-core")
        metadata.version("dbt-bigquery")
    except metadata.PackageNotFoundError:
        return False
    return True


class DbtAsyncSetupOperator(BaseOperator):
    """Run dbt once against the recording endpoint and upload each node's script under the run's prefix."""

    template_fields: Sequence[str] = ("dbt_vars", "env")
    ui_color = "#d9ecff"

    def __init__(self, *, project_dir: str | Path, profile_config: ProfileConfig, node_ids: Sequence[str],
                 remote_target_path: str, remote_target_path_conn_id: str | None, select: Sequence[str] = (),
                 exclude: Sequence[str] = (), dbt_vars: dict[str, Any] | None = None, full_refresh: bool = False,
                 install_deps: bool = False, env: dict[str, str] | None = None,
                 py_requirements: Sequence[str] = (), use_venv: bool | None = None,
                 dbt_group_id: str | None = None, dbt_executable_path: str | Path | None = None,
                 sources: Sequence[str] = (), **kwargs: Any) -> None:
        """``dbt_group_id``: the DbtTaskGroup this setup serves (its files get their own directory of the run).
        ``py_requirements``: ExecutionConfig.async_py_requirements, installed into a cached virtualenv when
        dbt is not importable here. ``use_venv``: True forces the virtualenv, False forbids it, None decides by
        whether dbt is installed. ``dbt_executable_path``: capture with that dbt's interpreter instead.
        ``sources``: ``source:...`` selectors whose freshness queries the capture records."""
        super().__init__(**kwargs)
        self.project_dir = str(project_dir)
        self.profile_config = profile_config
        self.node_ids = sorted(node_ids)
        self.remote_target_path = remote_target_path
        self.remote_target_path_conn_id = remote_target_path_conn_id
        self.select = list(select)
        self.exclude = list(exclude)
        self.dbt_vars = dict(dbt_vars or {})
        self.full_refresh = full_refresh
        self.install_deps = install_deps
        self.env = dict(env or {})
        self.py_requirements = list(py_requirements)
        self.use_venv = use_venv
        self.dbt_group_id = dbt_group_id
        self.dbt_executable_path = str(dbt_executable_path) if dbt_executable_path else None
        self.sources = list(sources)

    def _python(self) -> Path | None:
        """The interpreter of the dbt to capture with, or None to capture in this process."""
        if self.dbt_executable_path:
            from cosmos_async.dbt.executable import dbt_python

            python = dbt_python(self.dbt_executable_path)
            self.log.info("capturing with the Python of %s: %s", self.dbt_executable_path, python)
            return python
        wanted = self.use_venv if self.use_venv is not None else not dbt_installed()
        if not wanted:
            return None
        if not self.py_requirements:
            raise ConfigurationError(
                "dbt is not installed in the Airflow environment of the setup task: install dbt-bigquery there, or "
                "set ExecutionConfig(async_py_requirements=['dbt-bigquery==<version>']) so the setup task builds "
                "a virtualenv with it."
            )
        from cosmos_async.dbt.venv import ensure_venv, venv_python

        started = time.monotonic()
        venv = ensure_venv(self.py_requirements)
        self.log.info("dbt virtualenv for %s ready at %s in %.2fs", self.py_requirements, venv,
                      time.monotonic() - started)
        return venv_python(venv)

    def _resolved_target(self) -> dict[str, Any]:
        """The profile's target rendered here, where operator_args' env is set (the triggerer may lack those
        variables)."""
        from cosmos_async.dbt.invoke import environment
        from cosmos_async.profiles import resolve_target

        with environment(self.env):
            return resolve_target(self.profile_config)

    def _capture(self, target: dict[str, Any], on_node_captured: Any = None) -> Any:
        """The capture (``target``: the resolved profile target, which keys dbt's kept partial-parse state); in this
        process ``on_node_captured`` hears of each node as dbt finishes it (a capture in another Python hands its
        nodes back only at the end, so there they go up afterwards)."""
        options: dict[str, Any] = {"select": self.select, "exclude": self.exclude, "dbt_vars": self.dbt_vars,
                                   "full_refresh": self.full_refresh, "install_deps": self.install_deps,
                                   "env": self.env, "sources": self.sources,
                                   "partial_parse": state_file(Path(self.project_dir), self.profile_config, target),
                                   "processes": capture_processes()}
        python = self._python()
        if python is None:
            from cosmos_async.dbt.capture import capture_project

            return capture_project(Path(self.project_dir), self.profile_config, on_node_captured=on_node_captured,
                                   **options)
        from cosmos_async.dbt.capture_cli import capture_in_python

        return capture_in_python(python, Path(self.project_dir), self.profile_config, log=self.log, **options)

    def _target_settings(self, target: dict[str, Any]) -> dict[str, Any] | None:
        """The resolved target's public fields, for the triggers. For a profile mapping, whose connection the
        triggers read themselves, only the job retry fields (its profile_args may set them); None when there is
        nothing to record."""
        from cosmos_async_triggers.dbt_profile import JOB_FIELDS, public_settings

        settings = public_settings(target)
        if self.profile_config.profiles_yml_filepath is None:
            settings = {k: v for k, v in settings.items() if k in JOB_FIELDS}
        return settings or None

    def execute(self, context: Any) -> dict[str, Any]:
        from cosmos_async.remote import RemoteTarget, RunUpload

        target = RemoteTarget.from_config(self.remote_target_path, self.remote_target_path_conn_id)
        dag_id, run_id = context["dag_run"].dag_id, context["run_id"]
        group = self.dbt_group_id
        started = time.monotonic()
        resolved = self._resolved_target()
        with RunUpload(target, dag_id, run_id, set(self.node_ids), group) as upload:
            capture = self._capture(resolved, upload.node_captured)
            captured = time.monotonic()
            index = upload.finish(capture, target_settings=self._target_settings(resolved))
        uploaded = time.monotonic()
        fallbacks = {uid: e["fallback"] for uid, e in index["nodes"].items() if e["fallback"]}
        total = sum(e["bytes"] for e in index["nodes"].values())
        self.log.info("captured %d nodes in %.2fs (%d files queued for upload meanwhile); uploaded the rest and "
                      "the index of %d nodes (%d bytes) to %s in %.2fs more", len(self.node_ids),
                      captured - started, upload.early, len(index["nodes"]), total,
                      target.run_prefix(dag_id, run_id, group), uploaded - captured)
        for unique_id, reason in sorted(fallbacks.items()):
            if index["nodes"][unique_id].get("after_parents"):
                self.log.info("%s will be compiled on a worker once its parents ran: %s", unique_id, reason)
            else:
                self.log.info("%s will run through dbt on a worker (LOCAL): %s", unique_id, reason)
        return {"prefix": target.run_prefix(dag_id, run_id, group), "nodes": len(index["nodes"]),
                "fallbacks": sorted(fallbacks), "capture_s": round(captured - started, 3),
                "upload_s": round(uploaded - captured, 3)}
