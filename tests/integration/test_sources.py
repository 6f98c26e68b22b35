"""Source tasks on the BigQuery emulator (issue 16): the DAG renders them, setup captures dbt's freshness queries
with real dbt, and the source trigger judges freshness as ``dbt source freshness`` does, waiting for late data.

Every case goes through the real chain: DbtDag (AIRFLOW_ASYNC) gives the trigger's kwargs, capture_project the
queries, upload_capture the index on file://, and BigQueryNodeTrigger runs in-process against the emulator.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.triggers.base import TriggerEvent
from cosmos_async_triggers import rest
from cosmos_async_triggers.bigquery import BigQueryNodeTrigger

from cosmos_async.capture import capture_project
from cosmos_async.config import ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos_async.constants import ExecutionMode, SourceRenderingBehavior
from cosmos_async.remote import RemoteTarget, upload_capture
from cosmos_async.render import DbtDag
from tests.support.connections import emulator_connections
from tests.support.source_project import insert_fresh_order, load_raw, write_source_project

PROJECT = "demo-proj"
RAW = "src_raw"


@pytest.fixture(scope="module")
def client(bigquery_emulator) -> Any:
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    return bigquery.Client(project=PROJECT, credentials=AnonymousCredentials(),
                           client_options=ClientOptions(api_endpoint=bigquery_emulator.endpoint))


@pytest.fixture(scope="module")
def project(tmp_path_factory, bigquery_emulator, gcs_emulator) -> Any:
    """The project, parsed by dbt, with the emulator connections and dbt's env set for the whole module."""
    root = write_source_project(tmp_path_factory.mktemp("sources") / "fresh_shop")
    with emulator_connections(PROJECT, bigquery_emulator.endpoint, bigquery_emulator.endpoint,
                              gcs_emulator.endpoint) as mp:
        mp.setenv("RAW_DATASET", RAW)
        mp.setenv("BIGQUERY_API_ENDPOINT", bigquery_emulator.endpoint)
        mp.setenv("BIGQUERY_DATASET", "src_models")
        subprocess.run([str(Path(sys.executable).with_name("dbt")), "parse", "--quiet", "--project-dir", str(root),
                        "--profiles-dir", str(root)], check=True, env=os.environ.copy())
        yield root


def _profile(root: Path) -> ProfileConfig:
    return ProfileConfig(profile_name="fresh_shop", target_name="dev", profiles_yml_filepath=root / "profiles.yml")


def _dag(root: Path, **operator_args: Any) -> DbtDag:
    project = ProjectConfig(dbt_project_path=root, manifest_path=root / "target" / "manifest.json")
    return DbtDag(dag_id=f"sources_{uuid.uuid4().hex[:6]}", schedule=None, start_date=datetime(2026, 1, 1),
                  project_config=project, profile_config=_profile(root),
                  execution_config=ExecutionConfig(execution_mode=ExecutionMode.AIRFLOW_ASYNC),
                  render_config=RenderConfig(source_rendering_behavior=SourceRenderingBehavior.WITH_TESTS_OR_FRESHNESS),
                  operator_args={"gcp_conn_id": "gcp_test", "remote_target_path": "file:///unused", **operator_args})


@pytest.fixture(scope="module")
def captured(project: Path, client: Any, tmp_path_factory) -> tuple[RemoteTarget, str, DbtDag]:
    """Setup's work, once: capture (models, tests and the sources' freshness queries) and upload."""
    load_raw(client, RAW, orders_age=timedelta(hours=30), payments_age=timedelta(hours=2))
    dag = _dag(project)
    setup = dag.get_task("dbt_setup_async")
    capture = capture_project(project, _profile(project), sources=setup.sources)
    target = RemoteTarget.from_config(f"file://{tmp_path_factory.mktemp('remote')}")
    run_id = f"manual__{uuid.uuid4().hex[:8]}"
    upload_capture(target, dag.dag_id, run_id, capture, set(setup.node_ids))
    return target, run_id, dag


def _trigger(captured: tuple[RemoteTarget, str, DbtDag], task_id: str, dag: DbtDag | None = None,
             ) -> BigQueryNodeTrigger:
    target, run_id, rendered = captured
    task = (dag or rendered).get_task(task_id)
    kwargs = task.trigger_kwargs(end_task=False, run={"dag_id": rendered.dag_id, "run_id": run_id,
                                                       "task_id": task_id, "map_index": -1})
    return BigQueryNodeTrigger(**{**kwargs, "remote_target_path": target.url, "poll_interval": 0.05})


def _payload(trigger: BigQueryNodeTrigger) -> dict[str, Any]:
    async def main() -> list[TriggerEvent]:
        try:
            return [event async for event in trigger.run()]
        finally:
            await rest.close_session()

    events = asyncio.run(main())
    assert len(events) == 1, events
    return events[0].payload


def test_sources_render_upstream_of_their_readers_only(captured) -> None:
    _, _, dag = captured
    assert dag.get_task("raw_orders_source").downstream_task_ids == {"stg_orders_run"}
    assert dag.get_task("raw_stores.source").downstream_task_ids == {"raw_stores.test"}
    assert "raw_regions_source" not in dag.task_ids  # neither freshness nor tests
    assert dag.get_task("calendar_run").upstream_task_ids == {"dbt_on_run_start"}
    assert sorted(dag.get_task("dbt_setup_async").sources) == [
        "source:fresh_shop.raw.customers", "source:fresh_shop.raw.events", "source:fresh_shop.raw.orders",
        "source:fresh_shop.raw.payments"]
    # The wait: the DAG's operator_args for every source, the source's own meta over it.
    assert dag.get_task("raw_orders_source").nodes[0]["wait"] is None
    assert dag.get_task("raw_events_source").nodes[0]["wait"] == {"interval_s": 3.0, "timeout_s": 180.0}


def test_stale_source_fails_with_dbts_wording(captured, client) -> None:
    load_raw(client, RAW, orders_age=timedelta(hours=30), payments_age=timedelta(minutes=1))
    payload = _payload(_trigger(captured, "raw_orders_source"))
    assert payload["status"] == "failed"
    message = payload["message"]
    assert message.startswith("ERROR STALE freshness of raw.orders: max(loaded_at) is "), message
    assert "30.0 hours ago" in message and "error_after is 1 hour (3600 s)" in message
    assert len(payload["jobs"]) == 1  # only the freshness query ran


def test_the_freshness_filter_comes_with_dbts_query(captured, client) -> None:
    load_raw(client, RAW, orders_age=timedelta(hours=30), payments_age=timedelta(minutes=1))
    insert_fresh_order(client, RAW, order_id=500)  # fresh, but outside `filter: "id < 100"`
    payload = _payload(_trigger(captured, "raw_orders_source"))
    assert payload["status"] == "failed" and "30.0 hours ago" in payload["message"], payload


def test_fresh_source_passes(captured, client) -> None:
    load_raw(client, RAW, orders_age=timedelta(minutes=5), payments_age=timedelta(minutes=1))
    payload = _payload(_trigger(captured, "raw_orders_source"))
    assert payload["status"] == "success", payload
    assert payload["warnings"] == []


def test_warn_after_only_warns_and_passes(captured, client) -> None:
    load_raw(client, RAW, orders_age=timedelta(minutes=5), payments_age=timedelta(hours=2))
    payload = _payload(_trigger(captured, "raw_payments_source"))
    assert payload["status"] == "success", payload
    [warning] = payload["warnings"]
    assert warning.startswith("WARN freshness of raw.payments: max(loaded_at) is ") and "2.0 hours ago" in warning
    assert "warn_after is 1 hour (3600 s)" in warning


def test_source_without_loaded_at_field_is_judged_from_table_metadata(captured, client, project) -> None:
    load_raw(client, RAW, orders_age=timedelta(minutes=5), payments_age=timedelta(minutes=1))
    payload = _payload(_trigger(captured, "raw_customers_source"))
    assert payload["status"] == "success", payload
    assert payload["jobs"] == []  # a tables.get, no query job
    # The same rule fails once the table's last change is older than error_after (1 hour, shrunk here).
    dag = _dag(project)
    task = dag.get_task("raw_customers_source")
    task.nodes[0]["error_after"] = {"seconds": 0, "text": "0 hours"}
    time.sleep(1.1)
    payload = _payload(_trigger(captured, "raw_customers_source", dag))
    assert payload["status"] == "failed"
    assert payload["message"].startswith("ERROR STALE freshness of raw.customers: the table's last modification "
                                         "(metadata: no loaded_at_field) is "), payload["message"]


def test_rows_inserted_during_the_wait_release_the_source(captured, client, project) -> None:
    load_raw(client, RAW, orders_age=timedelta(hours=30), payments_age=timedelta(minutes=1))
    dag = _dag(project, source_freshness_wait={"interval_minutes": 0.02, "timeout_minutes": 1})
    late = threading.Timer(2.5, insert_fresh_order, args=(client, RAW))
    started = time.monotonic()
    late.start()
    try:
        payload = _payload(_trigger(captured, "raw_orders_source", dag))
    finally:
        late.cancel()
    assert payload["status"] == "success", payload
    assert len(payload["jobs"]) >= 2  # it checked, waited, and checked again
    assert 2.5 <= time.monotonic() - started < 30


def test_wait_that_runs_out_fails_after_several_checks(captured, client, project) -> None:
    load_raw(client, RAW, orders_age=timedelta(hours=30), payments_age=timedelta(minutes=1))
    dag = _dag(project, source_freshness_wait={"interval_minutes": 0.01, "timeout_minutes": 0.03})
    payload = _payload(_trigger(captured, "raw_orders_source", dag))
    assert payload["status"] == "failed"
    assert payload["message"].startswith("ERROR STALE freshness of raw.orders") and "checks)" in payload["message"]


def test_failing_source_test_fails_its_task(captured, client) -> None:
    load_raw(client, RAW, orders_age=timedelta(minutes=5), payments_age=timedelta(minutes=1), stores_null=True)
    payload = _payload(_trigger(captured, "raw_stores.test"))
    assert payload["status"] == "failed"
    assert payload["message"] == ("Failure in test source_not_null_raw_stores_id "
                                  "(test.fresh_shop.source_not_null_raw_stores_id.43988f8f8d): got 1 result")


def test_local_mode_runs_dbt_source_freshness(project: Path, client) -> None:
    from cosmos_async.operators.local import run_dbt_command

    load_raw(client, RAW, orders_age=timedelta(hours=30), payments_age=timedelta(minutes=1))
    with pytest.raises(Exception, match="orders"):
        run_dbt_command(project, _profile(project), "source freshness", ["source:fresh_shop.raw.orders"])
    load_raw(client, RAW, orders_age=timedelta(minutes=5), payments_age=timedelta(minutes=1))
    run_dbt_command(project, _profile(project), "source freshness", ["source:fresh_shop.raw.orders"])
