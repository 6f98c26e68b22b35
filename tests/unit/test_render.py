"""The example project rendered as Airflow tasks: structure, assets, billing project, parse-time errors."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from cosmos_async import (
    DbtDag,
    ExecutionConfig,
    ExecutionMode,
    GoogleCloudServiceAccountDictProfileMapping,
    ProfileConfig,
    ProjectConfig,
    RenderConfig,
)

PROJECT = Path(__file__).resolve().parents[2] / "dev" / "dags" / "dbt" / "corner_shop"


def _dag(monkeypatch: pytest.MonkeyPatch, profile_args: dict | None = None,
         mode: ExecutionMode = ExecutionMode.AIRFLOW_ASYNC, setup_operator_args: dict | None = None,
         **kwargs) -> DbtDag:
    monkeypatch.setenv("AIRFLOW__COSMOS__REMOTE_TARGET_PATH", "file:///tmp/x")
    mapping = GoogleCloudServiceAccountDictProfileMapping(
        conn_id="gcp_conn", profile_args={"dataset": "shop", "project": "data-proj", **(profile_args or {})})
    return DbtDag(dag_id="render_test", schedule=None,
                  project_config=ProjectConfig(dbt_project_path=PROJECT, manifest_path=PROJECT / "manifest.json"),
                  profile_config=ProfileConfig(profile_name="corner_shop", target_name="dev",
                                               profile_mapping=mapping),
                  **{"execution_config": ExecutionConfig(execution_mode=mode, setup_operator_args=setup_operator_args),
                     **kwargs})


def test_jobs_are_billed_to_execution_project(monkeypatch: pytest.MonkeyPatch) -> None:
    """astronomer-cosmos #1933: the profile's execution_project was ignored."""
    dag = _dag(monkeypatch, {"execution_project": "billing-proj"})
    assert dag.task_dict["orders.run"].project == "billing-proj"
    assert _dag(monkeypatch).task_dict["orders.run"].project == "data-proj"


def test_async_dag_is_setup_nodes_teardown(monkeypatch: pytest.MonkeyPatch) -> None:
    dag = _dag(monkeypatch)
    setup, teardown = dag.task_dict["dbt_setup_async"], dag.task_dict["dbt_teardown_async"]
    assert setup.is_setup and teardown.is_teardown
    assert teardown.trigger_rule == "all_done"  # also after a failed setup, which may have uploaded some files
    assert dag.task_dict["dbt_on_run_end"].is_teardown  # runs after failures, yet failures still fail the run
    assert dag.task_dict["dbt_on_run_start"].upstream_task_ids == {"dbt_setup_async"}
    assert "int_order_payments" not in " ".join(dag.task_ids)  # ephemeral: no task
    # daily_revenue reads stg_orders/stg_payments through the ephemeral model: the edge passes through it.
    assert {"stg_orders.test", "stg_payments.test"} <= dag.task_dict["daily_revenue.run"].upstream_task_ids


def test_assets_use_the_real_relation(monkeypatch: pytest.MonkeyPatch) -> None:
    outlets = {t.task_id: [a.uri for a in t.outlets] for t in _dag(monkeypatch).tasks}
    # orders has alias fct_orders and the custom schema marts (dataset corner_shop_marts in the manifest).
    assert outlets["orders.run"] == ["bigquery://demo-proj/corner_shop_marts/fct_orders"]
    assert outlets["stg_orders.run"] == ["bigquery://demo-proj/corner_shop/stg_orders"]
    assert outlets["orders.test"] == []
    no_assets = _dag(monkeypatch, render_config=RenderConfig(emit_datasets=False))
    assert all(not t.outlets for t in no_assets.tasks)


def test_parsing_with_a_manifest_imports_no_dbt(tmp_path: Path) -> None:
    script = (f"import sys; sys.path.insert(0, {str(PROJECT.parents[1])!r}); import corner_shop; "
              "heavy = [m for m in ('dbt', 'google.cloud.bigquery', 'gcsfs') if m in sys.modules]; "
              "print(len(corner_shop.corner_shop.tasks), heavy)")
    env = {"AIRFLOW_HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
           "AIRFLOW__COSMOS__REMOTE_TARGET_PATH": f"file://{tmp_path}/remote"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    tasks, heavy = out.stdout.split(maxsplit=1)
    assert int(tasks) > 20 and heavy.strip() == "[]"


def _trigger_parents(task) -> list[str] | None:
    args = task.start_trigger_args
    return None if args is None else args.trigger_kwargs.get("parents", [])


def test_models_wait_in_the_triggerer_by_default_and_for_the_scheduler_where_it_cannot_serve(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Default (AIRFLOW_ASYNC): waiting in the triggerer; the scheduler gates the models of a DAG started on
    workers, one with a trigger rule of its own, one too large for the triggerer, or when the user says so."""
    from cosmos_async import render

    assert _dag(monkeypatch).task_dict["daily_revenue.run"].wait_for_parents == "triggerer"
    gated = {"worker path": _dag(monkeypatch, operator_args={"start_from_trigger": False}),
             "trigger rule": _dag(monkeypatch, operator_args={"trigger_rule": "all_done"}),
             "asked": _dag(monkeypatch, operator_args={"wait_for_parents": "scheduler"})}
    from cosmos_async.provider import OPTIONS  # what `airflow config list` tells users

    assert "more than 500 node tasks" in OPTIONS["wait_for_parents"][0] and render.TRIGGERER_WAIT_MAX_TASKS == 500
    monkeypatch.setattr(render, "TRIGGERER_WAIT_MAX_TASKS", 5)
    gated["large"] = _dag(monkeypatch)
    gated["large, asked for the triggerer"] = _dag(monkeypatch, operator_args={"wait_for_parents": "triggerer"})
    waits = {why: dag.task_dict["daily_revenue.run"].wait_for_parents for why, dag in gated.items()}
    assert waits == {"worker path": "scheduler", "trigger rule": "scheduler", "asked": "scheduler",
                     "large": "scheduler", "large, asked for the triggerer": "triggerer"}

    monkeypatch.setenv("AIRFLOW__COSMOS__WAIT_FOR_PARENTS", "scheduler")
    daily = _dag(monkeypatch).task_dict["daily_revenue.run"]
    assert daily.trigger_rule == "all_success" and _trigger_parents(daily) == []
    assert daily.wait_for_parents == "scheduler" and daily.max_jobs is None  # no cap unless the user sets one
    timed = _dag(monkeypatch, operator_args={"execution_timeout": timedelta(seconds=7)}).task_dict["orders.run"]
    assert timed.start_trigger_args.timeout == timedelta(seconds=7)  # Airflow times the trigger, as before
    assert "execution_timeout_s" not in timed.start_trigger_args.trigger_kwargs  # the trigger's default: None


def _scheduler_view(dag, task_id: str):
    """The task as Airflow's scheduler reads it: from the serialized DAG."""
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.from_dict(DagSerialization.to_dict(dag)).task_dict[task_id]


def test_triggerer_mode_execution_timeout_counts_from_the_parents_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow would count a deferred task's execution_timeout from the run's start (parents' time included): in
    triggerer mode it is given none, and the trigger times the task's jobs itself; scheduler mode is as before."""
    seven = timedelta(seconds=7)
    dag = _dag(monkeypatch, operator_args={"wait_for_parents": "triggerer", "execution_timeout": seven})
    daily = dag.task_dict["daily_revenue.run"]
    assert daily.job_timeout == seven and daily.execution_timeout is None
    assert _scheduler_view(dag, "daily_revenue.run").execution_timeout is None
    assert daily.start_trigger_args.timeout is None
    assert daily.start_trigger_args.trigger_kwargs["execution_timeout_s"] == 7.0
    daily.execution_timeout = timedelta(seconds=3)  # set after rendering, as a DAG file may
    assert daily.start_trigger_args.trigger_kwargs["execution_timeout_s"] == 3.0
    assert _scheduler_view(dag, "daily_revenue.run").execution_timeout is None
    gated = _dag(monkeypatch, operator_args={"execution_timeout": seven, "wait_for_parents": "scheduler"})
    assert _scheduler_view(gated, "daily_revenue.run").execution_timeout == seven


def test_triggerer_mode_models_wait_for_their_parents_in_the_triggerer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model task starts with the run and its trigger waits for exactly its graph parents."""
    dag = _dag(monkeypatch, operator_args={"wait_for_parents": "triggerer"})
    daily = dag.task_dict["daily_revenue.run"]
    assert daily.trigger_rule == "always"
    # dbt's edges kept and handed to the trigger, with the setup (a clear re-runs it before the model).
    assert _trigger_parents(daily) == sorted({*daily.upstream_task_ids, "dbt_setup_async"})
    start = dag.task_dict["dbt_on_run_start"]  # Airflow wants all_success right after a setup task
    assert start.trigger_rule == "all_success"
    # Released by the scheduler when setup ends, it awaits its jobs on that worker instead of queuing behind the
    # run's node triggers in the triggerer.
    assert start.await_on_worker and start.start_trigger_args is None
    gated = {"wait_for_parents": "scheduler"}
    assert not _dag(monkeypatch, operator_args=gated).task_dict["dbt_on_run_start"].await_on_worker  # deferred
    assert daily.start_trigger_args.timeout is None  # waiting does not count against execution_timeout
    end = dag.task_dict["dbt_on_run_end"]
    assert end.trigger_rule != "always" and _trigger_parents(end) == []  # a teardown: scheduler-gated, runs last
    assert daily.max_jobs == 4  # the mapping's default threads
    monkeypatch.setenv("AIRFLOW__COSMOS__WAIT_FOR_PARENTS", "triggerer")
    assert _dag(monkeypatch, operator_args={"start_from_trigger": False}).task_dict[
        "daily_revenue.run"].trigger_rule == "always"  # asked for: also on the worker path (rescheduling there)
    # WATCHER is the triggerer engine whatever [cosmos] says.
    monkeypatch.setenv("AIRFLOW__COSMOS__WAIT_FOR_PARENTS", "scheduler")
    assert _dag(monkeypatch, mode=ExecutionMode.WATCHER).task_dict["daily_revenue.run"].trigger_rule == "always"


def test_edges_added_after_rendering_are_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk import BaseOperator

    dag = _dag(monkeypatch, operator_args={"wait_for_parents": "triggerer"})
    with dag:
        extra = BaseOperator(task_id="extract")
    extra >> dag.task_dict["stg_orders.run"]
    assert "extract" in _trigger_parents(dag.task_dict["stg_orders.run"])


def test_job_cap_follows_threads_when_waiting_in_the_triggerer(monkeypatch: pytest.MonkeyPatch) -> None:
    wait = {"wait_for_parents": "triggerer"}
    assert _dag(monkeypatch, {"threads": 8}, operator_args=wait).task_dict["orders.run"].max_jobs == 8
    assert _dag(monkeypatch, {"threads": 8}, operator_args={**wait, "max_concurrent_jobs": 2}).task_dict[
        "orders.run"].max_jobs == 2
    monkeypatch.setenv("AIRFLOW__COSMOS__MAX_CONCURRENT_JOBS", "3")
    assert _dag(monkeypatch, {"threads": 8}, operator_args=wait).task_dict["orders.run"].max_jobs == 3
    # An explicit cap also holds for scheduler-gated runs (which have none by default).
    task = _dag(monkeypatch, operator_args={"wait_for_parents": "scheduler"}).task_dict["orders.run"]
    assert task.start_trigger_args.trigger_kwargs["max_jobs"] == 3


def test_watcher_applies_setup_operator_args(monkeypatch: pytest.MonkeyPatch) -> None:
    dag = _dag(monkeypatch, mode=ExecutionMode.WATCHER, setup_operator_args={"queue": "dbt_producer", "retries": 0},
               operator_args={"retries": 2})
    setup = dag.task_dict["dbt_setup_async"]
    assert (setup.queue, setup.retries) == ("dbt_producer", 0)
    assert dag.task_dict["orders.run"].retries == 2 and dag.task_dict["orders.run"].queue != "dbt_producer"
    assert "orders.test" in dag.task_dict  # tests are their own jobs: AFTER_EACH works under WATCHER


def test_bad_scheduling_arguments_name_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from cosmos_async.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="wait_for_parents='sideways'"):
        _dag(monkeypatch, operator_args={"wait_for_parents": "sideways"})
    with pytest.raises(ConfigurationError, match="trigger_rule='all_done' needs wait_for_parents='scheduler'"):
        _dag(monkeypatch, operator_args={"trigger_rule": "all_done", "wait_for_parents": "triggerer"})
    assert _dag(monkeypatch, operator_args={"trigger_rule": "all_done"}).task_dict["orders.run"].trigger_rule == \
        "all_done"  # a trigger rule of its own: scheduler-gated, any trigger rule, as before
    with pytest.raises(ConfigurationError, match="vars belong in operator_args"):
        _dag(monkeypatch, mode=ExecutionMode.WATCHER, setup_operator_args={"vars": {"a": 1}})
    with pytest.raises(ConfigurationError, match="setup_operator_args"):
        ExecutionConfig(execution_mode=ExecutionMode.LOCAL, setup_operator_args={"queue": "q"})


def test_a_freshness_wait_in_local_mode_is_refused_naming_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from cosmos_async.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"source_freshness_wait needs ExecutionMode\.AIRFLOW_ASYNC"):
        _dag(monkeypatch, execution_config=ExecutionConfig(execution_mode=ExecutionMode.LOCAL),
             operator_args={"source_freshness_wait": {"interval_minutes": 5, "timeout_minutes": 60}})


def test_serialized_start_trigger_args_leave_out_only_the_triggers_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow ships the whole serialized DAG with each start-from-trigger workload, so the per-task payload is kept
    small: the trigger built from the trimmed kwargs is the one the full kwargs build."""
    import inspect

    from cosmos_async_triggers.bigquery import BigQueryNodeTrigger

    from cosmos_async.operators.bigquery import TRIGGER_DEFAULTS

    signature = inspect.signature(BigQueryNodeTrigger.__init__).parameters
    for name, default in TRIGGER_DEFAULTS.items():
        assert (signature[name].default or []) == default if name == "parents" else signature[name].default == default
    for wait in ("scheduler", "triggerer"):
        task = _dag(monkeypatch, operator_args={"wait_for_parents": wait}).task_dict["orders.run"]
        trimmed = task.start_trigger_args.trigger_kwargs
        full = task.trigger_kwargs(end_task=True, parents=task.parent_task_ids() if wait == "triggerer" else [],
                                   times_itself=wait == "triggerer")
        assert len(trimmed) < len(full)
        assert BigQueryNodeTrigger(**trimmed).serialize() == BigQueryNodeTrigger(**full).serialize()


def test_only_the_templated_part_of_the_local_fallback_is_a_serialized_field(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.serialization.serialized_objects import DagSerialization

    dag = _dag(monkeypatch, operator_args={"vars": {"day": "{{ ds }}"}})
    task = dag.task_dict["orders.run"]
    assert task.local_fallback == {"select": ["fqn:corner_shop.marts.orders"], "dbt_vars": {"day": "{{ ds }}"}}
    assert task.fallback_settings["command"] == "run" and "profile_config" in task.fallback_settings
    serialized = DagSerialization.to_dict(dag)["dag"]["tasks"]
    fields = next(t["__var"] for t in serialized if t["__var"]["task_id"] == "orders.run")
    assert "profile_config" not in str(fields.get("local_fallback")) and "fallback_settings" not in fields


@pytest.mark.parametrize(("subprocess_dbt", "kind", "expected"), [
    (False, "model", True),   # dbt in this worker's Python: compiled here, its job in the triggerer
    (True, "model", False),   # InvocationMode.SUBPROCESS (a virtualenv, dbt_executable_path): LOCAL
    (False, "hook", False),   # on-run-end is compiled only with the whole run
])
def test_a_node_after_its_parents_is_compiled_on_the_worker_only_with_in_process_dbt(
        subprocess_dbt: bool, kind: str, expected: bool) -> None:
    from cosmos_async.dbt.executable import DbtInvocation
    from cosmos_async.operators.bigquery import DbtBigQueryAsyncOperator

    fallback = {"project_dir": "/p", "profile_config": None, "command": "run", "select": ["m"],
                "invocation": DbtInvocation(subprocess=subprocess_dbt)}
    task = DbtBigQueryAsyncOperator(task_id="m_run", nodes=[{"id": "model.p.m", "kind": kind, "name": "m"}],
                                    gcp_conn_id="g", remote_target_path="file:///r", remote_target_path_conn_id=None,
                                    location=None, local_fallback=fallback)
    assert task._can_recompile() is expected
