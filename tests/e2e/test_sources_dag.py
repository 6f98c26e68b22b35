"""Source freshness gates on real Airflow processes (issue 16): one stack, one DAG, one run holding every case.

The fresh_shop project (tests/support/source_project.py) runs as AIRFLOW_ASYNC with
SourceRenderingBehavior.WITH_TESTS_OR_FRESHNESS. In the one run:
- ``orders`` is 30 h old, error_after 1 h, no wait: its task fails with dbt's wording, stg_orders fails
  naming it (waiting in the triggerer, the default: no trigger may set upstream_failed) and is never built;
- ``events`` is stale too but waits (its meta re-checks every 3 s): rows loaded while its task is deferred
  release it, and the source task never holds a worker slot;
- ``payments`` is past warn_after only: the task log says so and stg_payments is built;
- ``customers`` has no loaded_at_field: judged from the table's metadata, fresh;
- ``stores`` has a failing not_null source test: stg_stores fails naming it, unbuilt;
- ``calendar`` reads no source and is built whatever the sources do.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from tests.support.airflow import AirflowStack, AirflowStackError
from tests.support.source_project import insert_fresh_event, load_raw, write_source_project

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "fresh_shop_gates"
RAW, MODELS = "e2e_src_raw", "e2e_src_models"

DAG_FILE = '''"""The seed-004 pattern as an airflow DAG: freshness gates in front of the dbt models."""
from datetime import datetime
from pathlib import Path

from cosmos_async import DbtDag, ExecutionConfig, ExecutionMode, ProfileConfig, ProjectConfig, RenderConfig
from cosmos_async.constants import SourceRenderingBehavior

PROJECT = Path(__file__).parent / "fresh_shop"
fresh_shop_gates = DbtDag(
    dag_id="@DAG_ID@", schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
    project_config=ProjectConfig(dbt_project_path=PROJECT, manifest_path=PROJECT / "target" / "manifest.json"),
    profile_config=ProfileConfig(profile_name="fresh_shop", target_name="dev",
                                 profiles_yml_filepath=PROJECT / "profiles.yml"),
    execution_config=ExecutionConfig(execution_mode=ExecutionMode.AIRFLOW_ASYNC),
    render_config=RenderConfig(source_rendering_behavior=SourceRenderingBehavior.WITH_TESTS_OR_FRESHNESS),
    operator_args={"gcp_conn_id": "gcp_conn"},
)
'''.replace("@DAG_ID@", DAG_ID)


@pytest.fixture(scope="module")
def client(bigquery_emulator) -> bigquery.Client:
    return bigquery.Client(project="demo-proj", credentials=AnonymousCredentials(),
                           client_options=ClientOptions(api_endpoint=bigquery_emulator.endpoint))


@pytest.fixture(scope="module")
def stack(tmp_path_factory, bigquery_emulator, airflow_database_url) -> Iterator[AirflowStack]:
    dags = tmp_path_factory.mktemp("dags")
    project = write_source_project(dags / "fresh_shop")
    dbt_env = {"RAW_DATASET": RAW, "BIGQUERY_DATASET": MODELS, "BIGQUERY_API_ENDPOINT": bigquery_emulator.endpoint}
    subprocess.run([str(Path(sys.executable).with_name("dbt")), "parse", "--quiet", "--project-dir", str(project),
                    "--profiles-dir", str(project)], check=True, env={**os.environ, **dbt_env})
    (dags / "fresh_shop_gates.py").write_text(DAG_FILE)
    conn = {"conn_type": "google_cloud_platform",
            "extra": {"project": "demo-proj", "anonymous": True, "bigquery_api_endpoint": bigquery_emulator.endpoint}}
    env = {**dbt_env, "AIRFLOW_CONN_GCP_CONN": json.dumps(conn), "PYTHONPATH": str(REPO),
           "AIRFLOW__COSMOS__REMOTE_TARGET_PATH": f"file://{tmp_path_factory.mktemp('remote')}",
           "AIRFLOW__COSMOS__POLL_INTERVAL": "0.5"}
    with AirflowStack(tmp_path_factory.mktemp("airflow"), dags, env=env, parallelism=4,
                      database_url=airflow_database_url) as af:
        af.wait_for_dag(DAG_ID, timeout=120)
        yield af


def _tables(client: bigquery.Client) -> set[str]:
    return {t.table_id for t in client.list_tables(MODELS)} if MODELS in {
        d.dataset_id for d in client.list_datasets()} else set()


def _wait_stale_check(stack: AirflowStack, run_id: str, task_id: str, timeout: float = 180) -> str:
    """The task's log once its trigger found the source stale and waits (the task defers with the run, before
    the setup has ended: being deferred does not mean it has checked yet)."""
    deadline = time.monotonic() + timeout
    while True:
        text = ""
        with contextlib.suppress(AirflowStackError):
            text = stack.task_log(DAG_ID, run_id, task_id)
        if "checking again in" in text or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def test_freshness_gates_in_one_run(stack: AirflowStack, client: bigquery.Client) -> None:
    load_raw(client, RAW, orders_age=timedelta(hours=30), payments_age=timedelta(hours=2), stores_null=True,
             events_age=timedelta(hours=30))
    started = time.monotonic()
    run_id = stack.trigger(DAG_ID)
    # The events source has checked once and waits in the triggerer; its late rows arrive now.
    assert "ERROR STALE freshness of raw.events" in _wait_stale_check(stack, run_id, "raw_events_source")
    assert stack.task_instance(DAG_ID, run_id, "raw_events_source")["state"] == "deferred"
    time.sleep(4)  # at least one more check finds it still stale
    insert_fresh_event(client, RAW)
    state = stack.wait_for_run(DAG_ID, run_id, timeout=240)
    elapsed = time.monotonic() - started
    states = {t["task_id"]: t["state"] for t in stack.task_instances(DAG_ID, run_id)}
    assert state == "failed", states  # orders and the stores test fail the run
    assert {task: states[task] for task in (
        "raw_orders_source", "stg_orders_run", "raw_events_source", "stg_events_run", "raw_payments_source",
        "stg_payments_run", "raw_customers_source", "stg_customers_run", "raw_stores.source", "raw_stores.test",
        "stg_stores_run", "calendar_run")} == {
        "raw_orders_source": "failed", "stg_orders_run": "failed",
        "raw_events_source": "success", "stg_events_run": "success",
        "raw_payments_source": "success", "stg_payments_run": "success",
        "raw_customers_source": "success", "stg_customers_run": "success",
        "raw_stores.source": "success", "raw_stores.test": "failed", "stg_stores_run": "failed",
        "calendar_run": "success"}
    # No job built what a stale or failing source feeds; everything else is there (regions has no gate).
    assert _tables(client) == {"stg_events", "stg_payments", "stg_customers", "stg_regions", "calendar"}

    orders_log = stack.task_log(DAG_ID, run_id, "raw_orders_source")
    assert "ERROR STALE freshness of raw.orders: max(loaded_at) is " in orders_log
    assert "30.0 hours ago" in orders_log and "error_after is 1 hour (3600 s)" in orders_log
    assert "not run: upstream task 'raw_orders_source' ended failed" in stack.task_log(DAG_ID, run_id, "stg_orders_run")
    assert "not run: upstream task 'raw_stores.test' ended failed" in stack.task_log(DAG_ID, run_id, "stg_stores_run")
    assert "WARN freshness of raw.payments" in stack.task_log(DAG_ID, run_id, "raw_payments_source")
    events_log = stack.task_log(DAG_ID, run_id, "raw_events_source")
    assert "ERROR STALE freshness of raw.events" in events_log and "checking again in 3 s" in events_log
    assert "PASS freshness of raw.events" in events_log
    # Waiting for late data held no worker slot: the source task started and ended in the triggerer.
    assert stack.worker_seconds(DAG_ID, run_id)["raw_events_source"] == 0.0
    print(f"fresh_shop_gates run: {elapsed:.1f} s")
