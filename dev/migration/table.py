"""The README's migration table: every astronomer-cosmos 1.15 argument, and what cosmos-async does with it.

``ROWS`` is the specification; ``tests/unit/test_migration_table.py`` holds the code to it (a supported row's sample
value is accepted by a real ``DbtDag``, a refused row raises exactly the message quoted) and holds the README to
``render()``. After changing a row: ``python -m dev.migration.table --write`` rewrites the README section.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from cosmos_async.constants import ExecutionMode, LoadMode

HERE = Path(__file__).parent
README = HERE.parents[1] / "README.md"
COSMOS_ARGUMENTS = json.loads((HERE / "cosmos_1_15_arguments.json").read_text())
START, END = "<!-- migration-table:start -->", "<!-- migration-table:end -->"
OWNERS = ("ProjectConfig", "ProfileConfig", "ExecutionConfig", "RenderConfig", "DbtDag / DbtTaskGroup",
          "operator_args")
# Arguments whose Cosmos values are enum members: one row per member.
ENUM_ARGUMENTS = {("ExecutionConfig", "execution_mode"): "ExecutionMode",
                  ("ExecutionConfig", "invocation_mode"): "InvocationMode",
                  ("RenderConfig", "load_method"): "LoadMode", ("RenderConfig", "test_behavior"): "TestBehavior",
                  ("RenderConfig", "source_rendering_behavior"): "SourceRenderingBehavior"}
# operator_args keys Cosmos DAGs commonly pass (Cosmos forwards the unknown ones to BaseOperator).
COMMON_OPERATOR_ARGS = (
    "install_deps", "full_refresh", "vars", "env", "append_env", "dbt_cmd_flags", "dbt_cmd_global_flags", "quiet",
    "fail_fast", "cancel_query_on_kill", "py_requirements", "py_system_site_packages", "location",
    "retries", "retry_delay", "execution_timeout", "pool", "pool_slots", "queue", "priority_weight", "owner",
    "email", "email_on_failure", "email_on_retry", "trigger_rule", "on_failure_callback", "on_success_callback",
    "on_retry_callback", "on_execute_callback", "max_active_tis_per_dag",
)
DBT = str(Path(sys.executable).with_name("dbt"))


def _callback(context: Any) -> None:
    """A sample callback for the callback rows."""


def refused(owner: str, name: str) -> str:
    """The message of ``config._reject`` for one argument cosmos-async does not implement."""
    return (f"{owner}: argument(s) {name} are not supported by cosmos-async; remove them (the README's migration "
            "table lists every Cosmos argument and what cosmos-async does with it).")


@dataclass(frozen=True)
class Row:
    """One Cosmos argument (or one value of it): supported with what it does here, or refused with ``error``."""

    owner: str
    argument: str  # the Cosmos name; ``name=Enum.MEMBER`` for a row per enum member
    value: Any  # the sample value; for enum rows the member's name
    does: str = ""  # supported: what it does in cosmos-async
    error: str = ""  # not supported: the exact message raised
    extra: dict[str, Any] = field(default_factory=dict)  # other arguments the sample needs (same owner)

    @property
    def name(self) -> str:
        return self.argument.split("=", 1)[0]

    @property
    def supported(self) -> bool:
        return not self.error


def _ok(owner: str, argument: str, value: Any, does: str, **extra: Any) -> Row:
    return Row(owner, argument, value, does=does, extra=extra)


def _no(owner: str, argument: str, value: Any, error: str | None = None) -> Row:
    return Row(owner, argument, value, error=error or refused(owner, argument.split("=", 1)[0]))


def _mode(member: str) -> str:
    return (f"ExecutionConfig(execution_mode=ExecutionMode.{member}) is not supported by cosmos-async; use "
            "ExecutionMode.LOCAL, VIRTUALENV, AIRFLOW_ASYNC or WATCHER.")


P, F, E, R, D, OA = OWNERS
ROWS: tuple[Row, ...] = (
    _ok(P, "dbt_project_path", None, "the project dbt runs in (and where `dbt ls` runs when there is no manifest)"),
    _ok(P, "install_dbt_deps", False, "`dbt deps` before each dbt invocation (setup capture, LOCAL tasks)"),
    _no(P, "copy_dbt_packages", True),
    _no(P, "models_relative_path", "models"),
    _no(P, "seeds_relative_path", "seeds"),
    _no(P, "snapshots_relative_path", "snapshots"),
    _ok(P, "manifest_path", None, "render from this manifest.json at parse (no dbt import, no `dbt ls`)"),
    _no(P, "manifest_conn_id", "aws_default"),
    _ok(P, "project_name", "corner_shop", "the project's name (defaults to the project directory's name)"),
    _ok(P, "env_vars", {"CORNER_SHOP_FLAG": "1"}, "environment of every dbt invocation"),
    _ok(P, "dbt_vars", {"run_label": "x"}, "`--vars` of every dbt invocation (operator_args `vars` override them)"),
    _ok(P, "partial_parse", False, "accepted; dbt parses in a fresh target directory per invocation"),

    _ok(F, "profile_name", "corner_shop", "the dbt profile name"),
    _ok(F, "target_name", "dev", "the dbt target name"),
    _ok(F, "profiles_yml_filepath", None, "your own profiles.yml (LOCAL; AIRFLOW_ASYNC: the triggers authenticate "
                                          "as the target says, secrets resolved by `env_var()` where they run)"),
    _ok(F, "profile_mapping", None, "an Airflow connection mapped to a target: the GoogleCloud* BigQuery mappings"),

    _ok(E, "execution_mode=ExecutionMode.WATCHER", "WATCHER",
        "AIRFLOW_ASYNC with the setup as producer and each model waiting for its parents in the triggerer"),
    _ok(E, "execution_mode=ExecutionMode.LOCAL", "LOCAL", "dbt runs in the worker, one invocation per task"),
    _ok(E, "execution_mode=ExecutionMode.AIRFLOW_ASYNC", "AIRFLOW_ASYNC",
        "one capture per run in a setup task; each model's BigQuery job awaited in the triggerer"),
    *(_no(E, f"execution_mode=ExecutionMode.{m}", m, _mode(m))
      for m in ("DOCKER", "KUBERNETES", "AWS_EKS", "AWS_ECS")),
    _ok(E, "execution_mode=ExecutionMode.VIRTUALENV", "VIRTUALENV",
        "LOCAL with dbt from a virtualenv of operator_args `py_requirements`, one per requirement set (cached)",
        operator_args={"py_requirements": ["dbt-bigquery"]}),
    *(_no(E, f"execution_mode=ExecutionMode.{m}", m, _mode(m))
      for m in ("AZURE_CONTAINER_INSTANCE", "GCP_CLOUD_RUN_JOB", "GCP_GKE", "WATCHER_GCP_GKE",
                "WATCHER_KUBERNETES")),
    _ok(E, "invocation_mode=InvocationMode.SUBPROCESS", "SUBPROCESS",
        "LOCAL runs the dbt executable as a subprocess"),
    _ok(E, "invocation_mode=InvocationMode.DBT_RUNNER", "DBT_RUNNER",
        "LOCAL runs dbt in the task's process (the default)"),
    _no(E, "test_indirect_selection", "cautious"),
    _ok(E, "dbt_executable_path", DBT, "LOCAL runs this dbt; AIRFLOW_ASYNC's setup captures with its interpreter"),
    _no(E, "install_dbt_deps", True),
    _ok(E, "dbt_project_path", None, "the project dbt runs in, when ProjectConfig gives only a manifest"),
    _no(E, "virtualenv_dir", "/tmp/venvs"),
    _ok(E, "async_py_requirements", ["dbt-bigquery"], "AIRFLOW_ASYNC's setup captures in a cached virtualenv of "
                                                      "these requirements"),
    _ok(E, "setup_operator_args", {"queue": "setup"}, "AIRFLOW_ASYNC and WATCHER: Airflow arguments of the setup "
                                                      "task only, over operator_args",
        execution_mode=ExecutionMode.WATCHER),

    _ok(R, "emit_datasets", False, "each model task's outlet is the Asset `bigquery://project/dataset/table`"),
    _no(R, "test_behavior=TestBehavior.BUILD", "BUILD",
        "RenderConfig(test_behavior=TestBehavior.BUILD) is not supported by cosmos-async; use AFTER_EACH, "
        "AFTER_ALL or NONE."),
    _ok(R, "test_behavior=TestBehavior.NONE", "NONE", "no test tasks"),
    _ok(R, "test_behavior=TestBehavior.AFTER_EACH", "AFTER_EACH",
        "a node with tests becomes a group `<node>` of its task and `test` (the default)"),
    _ok(R, "test_behavior=TestBehavior.AFTER_ALL", "AFTER_ALL", "one test task after every other task"),
    _ok(R, "load_method=LoadMode.AUTOMATIC", "AUTOMATIC", "the manifest if it exists, else `dbt ls`"),
    _ok(R, "load_method=LoadMode.CUSTOM", "CUSTOM",
        "Cosmos's own parser is not reproduced: the manifest if given, else the cached `dbt ls`"),
    _ok(R, "load_method=LoadMode.DBT_LS", "DBT_LS", "`dbt ls` at parse, cached under [cosmos] cache_dir"),
    _ok(R, "load_method=LoadMode.DBT_LS_FILE", "DBT_LS_FILE",
        "the output of `dbt ls --output json` in RenderConfig(dbt_ls_path=...)", dbt_ls_path="dbt_ls.json"),
    _no(R, "load_method=LoadMode.DBT_LS_CACHE", "DBT_LS_CACHE",
        "RenderConfig(load_method=LoadMode.DBT_LS_CACHE) is not supported by cosmos-async; use LoadMode.DBT_LS, "
        "whose output cosmos-async always caches by project checksum."),
    _ok(R, "load_method=LoadMode.DBT_MANIFEST", "DBT_MANIFEST", "ProjectConfig(manifest_path=...)"),
    _ok(R, "source_rendering_behavior=SourceRenderingBehavior.NONE", "NONE", "no source tasks (the default)"),
    _ok(R, "source_rendering_behavior=SourceRenderingBehavior.ALL", "ALL",
        "a `<source>_<table>_source` task per source; LOCAL runs `dbt source freshness`, AIRFLOW_ASYNC checks "
        "freshness in the triggerer (and can wait for late data); a source without freshness is a no-op task"),
    _ok(R, "source_rendering_behavior=SourceRenderingBehavior.WITH_TESTS_OR_FRESHNESS", "WITH_TESTS_OR_FRESHNESS",
        "as ALL, for the sources with freshness rules or tests only"),
    _ok(R, "source_pruning", True, "only the sources that feed a selected node get a task"),
    _no(R, "invocation_mode", "subprocess"),
    _ok(R, "select", ["path:models"], "dbt selectors, evaluated in Python (matches `dbt ls` on 52 cases)"),
    _ok(R, "exclude", ["raw_payments"], "dbt selectors, evaluated in Python"),
    _no(R, "selector", "nightly"),
    _ok(R, "dbt_deps", False, "with ProjectConfig(install_dbt_deps): `dbt deps` before the parse-time `dbt ls`"),
    _no(R, "node_converters", {}),
    _no(R, "node_conversion_by_task_group", False),
    _no(R, "dbt_executable_path", DBT),
    _no(R, "env_vars", {"CORNER_SHOP_FLAG": "1"}),
    _ok(R, "dbt_project_path", None, "the project `dbt ls` runs in at parse"),
    _ok(R, "dbt_ls_path", "dbt_ls.json", "the file LoadMode.DBT_LS_FILE reads", load_method=LoadMode.DBT_LS_FILE),
    *(_no(R, name, value) for name, value in (
        ("enable_mock_profile", False), ("group_nodes_by_folder", True), ("seed_rendering_behavior", "never"),
        ("airflow_vars_to_purge_dbt_ls_cache", ["v"]), ("airflow_vars_to_purge_dbt_yaml_selectors_cache", ["v"]),
        ("normalize_task_id", str), ("normalize_task_display_name", str),
        ("should_detach_multiple_parents_tests", True), ("enable_owner_inheritance", False),
        ("ephemeral_models_as_empty_operator", False))),

    _ok(D, "group_id", "dbt", "DbtTaskGroup's id (default `dbt_task_group`)"),
    _ok(D, "project_config", None, "required"),
    _ok(D, "profile_config", None, "required"),
    _ok(D, "execution_config", None, "default ExecutionConfig() (LOCAL)"),
    _ok(D, "render_config", None, "default RenderConfig()"),
    _ok(D, "dag", None, "DbtTaskGroup: the DAG the group belongs to, passed to Airflow's TaskGroup"),
    _no(D, "task_group", "parent_group", refused("DbtDag", "task_group")),
    _ok(D, "operator_args", None, "keys below; others are refused"),
    _no(D, "on_warning_callback", _callback, refused("DbtDag", "on_warning_callback")),

    _ok(OA, "install_deps", True, "`dbt deps` first (overrides ProjectConfig(install_dbt_deps))"),
    _ok(OA, "full_refresh", True, "`--full-refresh` for run/seed/build, in LOCAL tasks and in the setup capture"),
    _ok(OA, "vars", {"run_label": "x"}, "`--vars` (templated at run time), merged over ProjectConfig(dbt_vars)"),
    _ok(OA, "env", {"RUN_LABEL": "{{ ds }}"}, "dbt's environment (templated at run time), over env_vars"),
    _ok(OA, "append_env", True, "default True; False gives dbt only `env` and the profile's variables (needs "
                                "InvocationMode.SUBPROCESS)"),
    _ok(OA, "dbt_cmd_flags", ["--threads", "2"], "a list after the dbt command, in dbt runs on workers (LOCAL, "
                                                 "VIRTUALENV, the async LOCAL fallback), not in the setup capture "
                                                 "(nor when a node is compiled again after its parents)"),
    _ok(OA, "dbt_cmd_global_flags", ["--no-write-json"], "a list before the dbt command, in the same runs"),
    _ok(OA, "quiet", True, "dbt's `--quiet`, in the same runs"),
    _ok(OA, "fail_fast", True, "dbt's `--fail-fast`, in the same runs"),
    _ok(OA, "cancel_query_on_kill", True, "default True: a killed SUBPROCESS task sends dbt SIGINT so it cancels "
                                          "its queries (on Linux, SIGKILLed tasks included); AIRFLOW_ASYNC nodes "
                                          "cancel their BigQuery job themselves"),
    _ok(OA, "py_requirements", ["dbt-bigquery"], "VIRTUALENV: what its cached virtualenv holds (LOCAL and "
                                                 "AIRFLOW_ASYNC ignore it with a parse-time warning, as Cosmos LOCAL)"),
    _ok(OA, "py_system_site_packages", False, "VIRTUALENV: the virtualenv sees the worker's packages (elsewhere "
                                              "ignored with a warning)"),
    _ok(OA, "location", "US", "BigQuery location of AIRFLOW_ASYNC jobs (else the profile's, else [cosmos])"),
    *(_ok(OA, name, value, "Airflow's BaseOperator argument, on every dbt task") for name, value in (
        ("retries", 2), ("retry_delay", timedelta(seconds=30)), ("execution_timeout", timedelta(minutes=5)),
        ("pool", "default_pool"), ("pool_slots", 1), ("queue", "default"), ("priority_weight", 2),
        ("owner", "data"), ("email", ["data@example.com"]), ("email_on_failure", False), ("email_on_retry", False),
        ("trigger_rule", "all_done"), ("on_failure_callback", _callback), ("on_success_callback", _callback),
        ("on_retry_callback", _callback), ("on_execute_callback", _callback), ("max_active_tis_per_dag", 4))),
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    """The migration table as it appears between the README's markers."""
    release = COSMOS_ARGUMENTS["source"].split("@")[1].replace("astronomer-cosmos-v", "astronomer-cosmos ")
    lines = [START, f"Every argument of {release} "
             "(`dev/migration/cosmos_1_15_arguments.json`, read from its source) and the `operator_args` Cosmos "
             "DAGs commonly use; `tests/unit/test_migration_table.py` checks each row against the code.", ""]
    for owner in OWNERS:
        lines += [f"**{owner}**", "", "| argument | in cosmos-async |", "| --- | --- |"]
        for row in (r for r in ROWS if r.owner == owner):
            verdict = f"supported: {row.does}" if row.supported else f"not supported: `{_cell(row.error)}`"
            lines.append(f"| `{row.argument}` | {_cell(verdict)} |")
        lines.append("")
    return "\n".join([*lines, END])


def readme_section(text: str) -> str:
    start, end = text.index(START), text.index(END) + len(END)
    return text[start:end]


if __name__ == "__main__":
    readme = README.read_text()
    table = render()
    if "--write" in sys.argv:
        README.write_text(readme.replace(readme_section(readme), table))
    else:
        print(table)
