"""The Cosmos-compatible configuration objects and the ``[cosmos]`` settings.

Argument names and meanings follow astronomer-cosmos so a DAG moves over by changing its import. A Cosmos
argument that cosmos-async does not implement raises :class:`UnsupportedArgumentError` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cosmos_async.constants import (  # re-exported: Cosmos DAGs import them from cosmos.config too
    ExecutionMode,
    InvocationMode,
    LoadMode,
    SourceRenderingBehavior,
    TestBehavior,
)
from cosmos_async.errors import ConfigurationError, UnsupportedArgumentError

__all__ = ["ExecutionConfig", "ExecutionMode", "InvocationMode", "LoadMode", "ProfileConfig", "ProjectConfig",
           "RenderConfig", "SourceRenderingBehavior", "TestBehavior", "cache_dir", "check_operator_args",
           "cosmos_setting"]

SUPPORTED_EXECUTION_MODES = (ExecutionMode.LOCAL, ExecutionMode.VIRTUALENV, ExecutionMode.AIRFLOW_ASYNC,
                             ExecutionMode.WATCHER)
# Modes whose models run as BigQuery jobs awaited in the triggerer (WATCHER: with their dependencies there too).
ASYNC_EXECUTION_MODES = (ExecutionMode.AIRFLOW_ASYNC, ExecutionMode.WATCHER)


def _reject(owner: str, unsupported: dict[str, Any]) -> None:
    if unsupported:
        names = ", ".join(sorted(unsupported))
        raise UnsupportedArgumentError(
            f"{owner}: argument(s) {names} are not supported by cosmos-async; remove them "
            f"(the README's migration table lists every Cosmos argument and what cosmos-async does with it)."
        )


@dataclass
class ProjectConfig:
    """Where the dbt project and its manifest are."""

    dbt_project_path: str | Path | None = None
    manifest_path: str | Path | None = None
    project_name: str | None = None
    dbt_vars: dict[str, Any] | None = None
    env_vars: dict[str, str] | None = None
    install_dbt_deps: bool = True
    partial_parse: bool = True

    def __init__(self, dbt_project_path: str | Path | None = None, manifest_path: str | Path | None = None,
                 project_name: str | None = None, dbt_vars: dict[str, Any] | None = None,
                 env_vars: dict[str, str] | None = None, install_dbt_deps: bool = True,
                 partial_parse: bool = True, **unsupported: Any) -> None:
        _reject("ProjectConfig", unsupported)
        self.dbt_project_path = Path(dbt_project_path) if dbt_project_path else None
        self.manifest_path = Path(manifest_path) if manifest_path else None
        self.project_name = project_name
        self.dbt_vars = dict(dbt_vars or {})
        self.env_vars = dict(env_vars or {})
        self.install_dbt_deps = install_dbt_deps
        self.partial_parse = partial_parse
        if self.dbt_project_path is None and self.manifest_path is None:
            raise ConfigurationError("ProjectConfig needs dbt_project_path, manifest_path, or both.")
        if self.project_name is None and self.dbt_project_path is not None:
            self.project_name = self.dbt_project_path.name


@dataclass
class ProfileConfig:
    """Which dbt profile and target to use: the user's profiles.yml or one built from an Airflow connection."""

    profile_name: str
    target_name: str
    profiles_yml_filepath: str | Path | None = None
    profile_mapping: Any = None

    def __init__(self, profile_name: str, target_name: str, profiles_yml_filepath: str | Path | None = None,
                 profile_mapping: Any = None, **unsupported: Any) -> None:
        _reject("ProfileConfig", unsupported)
        if (profiles_yml_filepath is None) == (profile_mapping is None):
            raise ConfigurationError("ProfileConfig needs exactly one of profiles_yml_filepath or profile_mapping.")
        self.profile_name = profile_name
        self.target_name = target_name
        self.profiles_yml_filepath = Path(profiles_yml_filepath) if profiles_yml_filepath else None
        self.profile_mapping = profile_mapping


@dataclass
class ExecutionConfig:
    """How nodes run: LOCAL / VIRTUALENV (dbt on the worker) or AIRFLOW_ASYNC (BigQuery jobs awaited in the
    triggerer).

    ``dbt_executable_path``: a dbt installed elsewhere (its own virtualenv, as MWAA and Astro document). LOCAL
    runs it as a subprocess; AIRFLOW_ASYNC's setup captures with that dbt's Python. ``invocation_mode``:
    DBT_RUNNER (dbt in the task process, the default) or SUBPROCESS (the ``dbt`` executable); given a
    ``dbt_executable_path`` it defaults to SUBPROCESS.
    """

    execution_mode: ExecutionMode = ExecutionMode.LOCAL
    invocation_mode: InvocationMode = InvocationMode.DBT_RUNNER
    dbt_executable_path: Path | None = None
    dbt_project_path: Path | None = None
    async_py_requirements: list[str] = field(default_factory=list)
    setup_operator_args: dict[str, Any] = field(default_factory=dict)

    def __init__(self, execution_mode: ExecutionMode = ExecutionMode.LOCAL,
                 invocation_mode: InvocationMode | None = None, dbt_executable_path: str | Path | None = None,
                 dbt_project_path: str | Path | None = None, async_py_requirements: list[str] | None = None,
                 setup_operator_args: dict[str, Any] | None = None, **unsupported: Any) -> None:
        """``setup_operator_args`` (AIRFLOW_ASYNC, WATCHER): Airflow arguments of the setup task only, e.g.
        ``{"queue": "dbt_setup"}``, over operator_args (Cosmos WATCHER's producer arguments)."""
        _reject("ExecutionConfig", unsupported)
        if execution_mode not in SUPPORTED_EXECUTION_MODES:
            raise UnsupportedArgumentError(
                f"ExecutionConfig(execution_mode={execution_mode}) is not supported by cosmos-async; "
                f"use ExecutionMode.LOCAL, VIRTUALENV, AIRFLOW_ASYNC or WATCHER."
            )
        if invocation_mode is not None and not isinstance(invocation_mode, InvocationMode):
            raise ConfigurationError(f"ExecutionConfig(invocation_mode={invocation_mode!r}): use "
                                     "InvocationMode.DBT_RUNNER or InvocationMode.SUBPROCESS.")
        if dbt_executable_path and invocation_mode == InvocationMode.DBT_RUNNER:
            raise ConfigurationError(
                f"ExecutionConfig(dbt_executable_path={str(dbt_executable_path)!r}, invocation_mode=DBT_RUNNER): "
                "DBT_RUNNER runs the dbt installed next to Airflow, not that executable; use "
                "InvocationMode.SUBPROCESS (the default with dbt_executable_path) or drop dbt_executable_path."
            )
        if execution_mode == ExecutionMode.VIRTUALENV and (dbt_executable_path
                                                           or invocation_mode == InvocationMode.DBT_RUNNER):
            raise ConfigurationError(
                "ExecutionConfig(execution_mode=VIRTUALENV) runs the dbt of the virtualenv it builds from "
                "operator_args py_requirements: drop dbt_executable_path / invocation_mode=DBT_RUNNER, or use LOCAL."
            )
        self.execution_mode = execution_mode
        self.dbt_executable_path = Path(dbt_executable_path) if dbt_executable_path else None
        if invocation_mode is None:
            invocation_mode = (InvocationMode.SUBPROCESS if self.dbt_executable_path
                               or execution_mode == ExecutionMode.VIRTUALENV else InvocationMode.DBT_RUNNER)
        self.invocation_mode = invocation_mode
        self.dbt_project_path = Path(dbt_project_path) if dbt_project_path else None
        self.async_py_requirements = list(async_py_requirements or [])
        if setup_operator_args and execution_mode not in ASYNC_EXECUTION_MODES:
            raise ConfigurationError(f"ExecutionConfig(setup_operator_args=...) applies to the setup task of "
                                     f"AIRFLOW_ASYNC and WATCHER; {execution_mode} has none: drop it.")
        self.setup_operator_args = check_operator_args(dict(setup_operator_args or {}), "setup_operator_args")


@dataclass
class RenderConfig:
    """How the dbt graph becomes Airflow tasks."""

    load_method: LoadMode = LoadMode.AUTOMATIC
    select: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    test_behavior: TestBehavior = TestBehavior.AFTER_EACH
    emit_datasets: bool = True
    dbt_deps: bool = True
    dbt_project_path: Path | None = None
    dbt_ls_path: Path | None = None
    source_rendering_behavior: SourceRenderingBehavior = SourceRenderingBehavior.NONE
    source_pruning: bool = False

    def __init__(self, load_method: LoadMode = LoadMode.AUTOMATIC, select: list[str] | str | None = None,
                 exclude: list[str] | str | None = None, test_behavior: TestBehavior = TestBehavior.AFTER_EACH,
                 emit_datasets: bool = True, dbt_deps: bool = True, dbt_project_path: str | Path | None = None,
                 dbt_ls_path: str | Path | None = None,
                 source_rendering_behavior: SourceRenderingBehavior = SourceRenderingBehavior.NONE,
                 source_pruning: bool = False, **unsupported: Any) -> None:
        """``load_method``: AUTOMATIC, DBT_MANIFEST, DBT_LS, DBT_LS_FILE (``dbt_ls_path`` holds the output of
        ``dbt ls --output json``) or CUSTOM (the manifest when ProjectConfig has one, else the cached
        ``dbt ls``: cosmos-async's own parser reads the project either way).

        ``source_rendering_behavior``: NONE (no source tasks), WITH_TESTS_OR_FRESHNESS (a ``<source>_<table>_source``
        task for each source with freshness rules or tests) or ALL (every source; one without either is a no-op
        task). ``source_pruning``: render only the sources that feed a selected node."""
        _reject("RenderConfig", unsupported)
        if not isinstance(source_rendering_behavior, SourceRenderingBehavior):
            raise ConfigurationError(
                f"RenderConfig(source_rendering_behavior={source_rendering_behavior!r}): use "
                "SourceRenderingBehavior.NONE, ALL or WITH_TESTS_OR_FRESHNESS (from cosmos_async.constants).")
        if load_method == LoadMode.DBT_LS_CACHE:
            raise UnsupportedArgumentError(
                "RenderConfig(load_method=LoadMode.DBT_LS_CACHE) is not supported by cosmos-async; use "
                "LoadMode.DBT_LS, whose output cosmos-async always caches by project checksum."
            )
        if (load_method == LoadMode.DBT_LS_FILE) != (dbt_ls_path is not None):
            raise ConfigurationError(
                "RenderConfig: LoadMode.DBT_LS_FILE and dbt_ls_path go together: set "
                "RenderConfig(load_method=LoadMode.DBT_LS_FILE, dbt_ls_path='<file of `dbt ls --output json`>')."
            )
        if test_behavior == TestBehavior.BUILD:
            raise UnsupportedArgumentError(
                "RenderConfig(test_behavior=TestBehavior.BUILD) is not supported by cosmos-async; "
                "use AFTER_EACH, AFTER_ALL or NONE."
            )
        self.load_method = load_method
        self.select = [select] if isinstance(select, str) else list(select or [])
        self.exclude = [exclude] if isinstance(exclude, str) else list(exclude or [])
        self.test_behavior = test_behavior
        self.emit_datasets = emit_datasets
        self.dbt_deps = dbt_deps
        self.dbt_project_path = Path(dbt_project_path) if dbt_project_path else None
        self.dbt_ls_path = Path(dbt_ls_path) if dbt_ls_path else None
        self.source_rendering_behavior = source_rendering_behavior
        self.source_pruning = bool(source_pruning)


# operator_args keys understood by cosmos-async operators; anything else is rejected at parse time.
OPERATOR_ARGS = frozenset({
    "install_deps", "full_refresh", "vars", "location", "env", "append_env", "poll_interval",
    "retries", "retry_delay", "execution_timeout", "pool", "pool_slots", "queue", "priority_weight",
    "owner", "email", "email_on_failure", "email_on_retry", "sla", "trigger_rule", "on_failure_callback",
    "on_success_callback", "on_retry_callback", "on_execute_callback", "max_active_tis_per_dag",
    "start_from_trigger", "project", "remote_target_path", "remote_target_path_conn_id", "gcp_conn_id",
    "dbt_cmd_flags", "dbt_cmd_global_flags", "quiet", "fail_fast", "cancel_query_on_kill", "py_requirements",
    "py_system_site_packages", "wait_for_parents", "max_concurrent_jobs", "source_freshness_wait",
})


def check_operator_args(operator_args: dict[str, Any], owner: str = "operator_args") -> dict[str, Any]:
    """Return operator_args unchanged, or raise naming every key cosmos-async does not implement."""
    _reject(owner, {k: v for k, v in operator_args.items() if k not in OPERATOR_ARGS})
    return dict(operator_args)


def cosmos_setting(name: str, default: str | None = None) -> str | None:
    """Read ``[cosmos] name`` (env ``AIRFLOW__COSMOS__NAME``) from Airflow's configuration."""
    from airflow.sdk import conf

    return conf.get("cosmos", name, fallback=default)


def capture_processes() -> int:
    """``[cosmos] capture_processes``: how many dbt processes the setup task's capture may run at once; by default
    two where this process may use two CPUs or more (dbt's work is bound by one), else one."""
    import os

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    configured = str(cosmos_setting("capture_processes", "") or "").strip()
    if not configured:
        return min(2, usable)
    try:
        value = int(configured)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigurationError(f"[cosmos] capture_processes must be a whole number of at least 1, not "
                                 f"{configured!r} (AIRFLOW__COSMOS__CAPTURE_PROCESSES).")
    return value


def cache_dir() -> Path:
    """``[cosmos] cache_dir``, or a ``cosmos_async_cache`` directory under the system temp dir."""
    import tempfile

    configured = cosmos_setting("cache_dir")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "cosmos_async_cache"
