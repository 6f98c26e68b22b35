"""Models compiled from what their parents build in the same run never run stale SQL, and never silently.

tests/projects/introspect has a model whose select list is its parent's columns
(``adapter.get_columns_in_relation``), one using the project's own star macro (INFORMATION_SCHEMA.COLUMNS
through ``run_query``), one with a column per region found in its parent (``run_query``), one introspecting
a table no node builds, and an incremental model reading only itself. Through the real path — the DbtDag's
setup operator captures and uploads to file://, then each task as ``airflow dags test`` runs it (the trigger
against the BigQuery emulator, then ``execute_complete`` on the worker, where a node compiled from its parents
is compiled again and defers to its trigger once more) — twice, with a column added to a parent and a seed row
with a new region in between. After each run the tables equal plain ``dbt build``'s.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from airflow.models.dagrun import DagRun
from airflow.sdk.exceptions import TaskDeferred
from cosmos_async_triggers import rest
from cosmos_async_triggers.bigquery import BigQueryNodeTrigger
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from cosmos_async import DbtDag, ExecutionConfig, ExecutionMode, ProfileConfig, ProjectConfig
from cosmos_async.dbt import capture
from cosmos_async.operators.bigquery import DbtBigQueryAsyncOperator
from tests.integration.test_bad_input import TaskInstanceXCom
from tests.support.connections import emulator_connections
from tests.support.dbt_oracle import built_tables, dbt_build, table_rows

PROJECT_SRC = Path(__file__).resolve().parents[1] / "projects" / "introspect"
PROJECT = "demo-proj"
DATASET = "stale_async"
EXT_DATASET = "stale_lookup_src"
DAG_ID = "introspect"
INTROSPECTING = {"model.introspect.orders_wide", "model.introspect.orders_star", "model.introspect.region_counts"}


def _change_parents(project: Path) -> None:
    """What happens between the two runs: a column added to a parent model, a new region in a seed."""
    (project / "models" / "stg_orders.sql").write_text(
        "{{ config(materialized='view') }}\n"
        "select order_id, customer_id, amount, amount * 2 as amount_doubled from {{ ref('raw_orders') }}\n")
    with (project / "seeds" / "raw_customers.csv").open("a") as seed:
        seed.write("4,Dev,west\n")


def _dag_run(dag: DbtDag, run_id: str, after_setup: Callable[[], None] | None = None) -> None:
    """Run every task of one DAG run in order, each as ``airflow dags test`` would (execute → trigger →
    execute_complete); ``after_setup`` is called once the setup task has captured and uploaded."""
    context = {"dag_run": DagRun(dag_id=DAG_ID, run_id=run_id), "run_id": run_id, "ti": TaskInstanceXCom()}
    for task_id, task in dag.dbt_tasks.items():
        if not isinstance(task, DbtBigQueryAsyncOperator):
            task.execute(context)
            if task_id == "dbt_setup_async" and after_setup is not None:
                after_setup()
            continue
        run = {"dag_id": DAG_ID, "run_id": run_id, "task_id": task.task_id, "map_index": -1}
        context["ti"] = _TaskInstance(**run)
        trigger = BigQueryNodeTrigger(**task.trigger_kwargs(end_task=False, run=run))

        async def events(trigger: BigQueryNodeTrigger = trigger) -> list[Any]:
            try:
                return [event async for event in trigger.run()]
            finally:
                await rest.close_session()

        (event,) = asyncio.run(events())
        try:
            task.execute_complete(context, event.payload)
        except TaskDeferred as deferred:  # compiled again after its parents: its jobs run in the trigger
            assert deferred.method_name == "execute_complete"
            again = deferred.trigger
            (event,) = asyncio.run(events(again))
            assert event.payload["status"] == "success", event.payload
            task.execute_complete(context, event.payload)


class _TaskInstance(TaskInstanceXCom):
    """What execute_complete reads of a task instance when it compiles a node again: its ids and try."""

    def __init__(self, *, dag_id: str, run_id: str, task_id: str, map_index: int) -> None:
        super().__init__()
        self.dag_id, self.run_id, self.task_id, self.map_index, self.try_number = (dag_id, run_id, task_id,
                                                                                  map_index, 1)


@pytest.fixture
def client(bigquery_emulator) -> bigquery.Client:
    client = bigquery.Client(project=PROJECT, credentials=AnonymousCredentials(),
                             client_options=ClientOptions(api_endpoint=bigquery_emulator.endpoint))
    client.create_dataset(EXT_DATASET, exists_ok=True)
    client.query(f"create or replace table `{PROJECT}.{EXT_DATASET}.lookup` as "
                 "select 1 as code, 'one' as label").result()
    return client


@pytest.mark.parametrize("processes", [1, 2], ids=["one_dbt_process", "split_between_two_dbt_processes"])
def test_models_built_from_their_parents_run_after_them_and_equal_dbt_build(
        tmp_path: Path, bigquery_emulator, client: bigquery.Client, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str], processes: int) -> None:
    """Split: the setup's capture shares the nodes with a second dbt process (the project is below the size
    where that pays, so the threshold is lowered); parent_seen, which asks dbt's relation cache about a parent
    the other process builds, must still see it built."""
    ours, oracle = tmp_path / "introspect", tmp_path / "oracle"
    for copy in (ours, oracle):
        shutil.copytree(PROJECT_SRC, copy)
    dataset = DATASET if processes == 1 else f"{DATASET}_split"
    monkeypatch.setenv("BIGQUERY_API_ENDPOINT", bigquery_emulator.endpoint)
    monkeypatch.setenv("INTROSPECT_EXT_DATASET", EXT_DATASET)
    monkeypatch.setenv("BIGQUERY_DATASET", dataset)
    monkeypatch.setenv("AIRFLOW__COSMOS__CAPTURE_PROCESSES", str(processes))
    monkeypatch.setattr(capture, "MIN_SPLIT_SQL_FILES", 1)
    with emulator_connections(PROJECT, bigquery_emulator.endpoint, bigquery_emulator.endpoint, "http://127.0.0.1:9"):
        dag = DbtDag(dag_id=DAG_ID, schedule=None,
                     project_config=ProjectConfig(dbt_project_path=ours),
                     profile_config=ProfileConfig(profile_name="introspect", target_name="dev",
                                                  profiles_yml_filepath=ours / "profiles.yml"),
                     execution_config=ExecutionConfig(execution_mode=ExecutionMode.AIRFLOW_ASYNC),
                     operator_args={"gcp_conn_id": "gcp_test", "poll_interval": 0.05,
                                    "remote_target_path": f"file://{tmp_path / 'remote'}"})
        for run in ("first", "second"):
            capfd.readouterr()
            _dag_run(dag, f"manual__{run}")
            log = "".join(capfd.readouterr())  # the tasks' log lines (Airflow's structlog writes them to stdout)
            assert ("[capture 2]" in log) == (processes == 2), log
            assert "capturing in one dbt process" not in log, log
            # Exactly the nodes that introspect their parents; the one reading a table no node builds, the
            # incremental model reading itself and the rest stay captured at setup.
            later = re.findall(r"(\S+) will be compiled on a worker once its parents ran", log)
            assert set(later) == INTROSPECTING, log
            assert (f"model.introspect.orders_wide will be compiled on a worker once its parents ran: its SQL "
                    f"depends on `{PROJECT}.{dataset}.stg_orders`, which model.introspect.stg_orders builds in this "
                    "run: compiled on a worker after it") in log
            assert f"`{PROJECT}.{dataset}.stg_customers`, which model.introspect.stg_customers" in log
            # Compiled again once their parents ran, their jobs in the trigger: none runs through dbt.
            again = re.findall(r"compiled (\S+) again and uploaded it \(recompiled/", log)
            assert sorted(again) == sorted(INTROSPECTING), log
            assert "running through dbt on this worker (LOCAL)" not in log
            assert "will run through dbt on a worker (LOCAL)" not in log

            with monkeypatch.context() as mp:
                mp.setenv("BIGQUERY_DATASET", f"oracle_{dataset}")
                dbt_build(oracle)
            expected = built_tables(client, f"oracle_{dataset}")
            assert expected and built_tables(client, dataset) == expected, run
            assert table_rows(client, dataset, "parent_seen") == [(True, 4)], run
            if run == "first":
                _change_parents(ours)
                _change_parents(oracle)

    # What a user would look for: this run's column and this run's region, not last run's.
    wide = client.get_table(f"{PROJECT}.{dataset}.orders_wide").schema
    assert [f.name for f in wide] == ["order_id", "customer_id", "amount", "amount_doubled"]
    regions = client.get_table(f"{PROJECT}.{dataset}.region_counts").schema
    assert [f.name for f in regions] == ["customers_north", "customers_south", "customers_west", "customers"]
