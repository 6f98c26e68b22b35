"""BigQueryNodeTrigger against the BigQuery emulator, directly and through the job-lifecycle proxy.

The index and scripts are written by the setup task's own uploader (cosmos_async.remote) on file:// and on the
GCS emulator, so writer and reader are tested together. Tests named ``..._via_lifecycle_proxy`` go through
tests/support/bq_lifecycle_proxy.py, which gives the emulator BigQuery's RUNNING phase, 409 duplicates,
cancellation and injected faults.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from airflow.triggers.base import TaskSuccessEvent, TriggerEvent
from cosmos_async_triggers import auth, rest
from cosmos_async_triggers import parents as parent_wait
from cosmos_async_triggers.bigquery import BigQueryNodeTrigger

from cosmos_async.dbt.captured import Capture, NodeCapture
from cosmos_async.remote import RemoteTarget, upload_capture
from tests.support.bq_lifecycle_proxy import LifecycleProxy
from tests.support.connections import remote_target

DATASET = "trig_ds"
PROJECT = "demo-proj"


pytestmark = pytest.mark.usefixtures("emulator_conns", "clean_proxy")


@pytest.fixture(scope="module")
def bq_client(bigquery_emulator) -> Any:
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    client = bigquery.Client(project=PROJECT, credentials=AnonymousCredentials(),
                             client_options=ClientOptions(api_endpoint=bigquery_emulator.endpoint))
    client.create_dataset(DATASET, exists_ok=True)
    return client


@pytest.fixture(params=["file", "gcs"])
def target(request, tmp_path) -> RemoteTarget:
    return remote_target(request, tmp_path, "trigger-tests")


@pytest.fixture
def file_target(tmp_path) -> RemoteTarget:
    return RemoteTarget.from_config(f"file://{tmp_path}/remote")


# ---- helpers --------------------------------------------------------------------------------------------


def new_run() -> str:
    return f"manual__{uuid.uuid4().hex[:10]}"


def upload(target: RemoteTarget, run_id: str, nodes: dict[str, NodeCapture]) -> dict[str, Any]:
    capture = Capture(nodes=nodes, on_run_start=NodeCapture(), on_run_end=NodeCapture())
    return upload_capture(target, "dag", run_id, capture, set(nodes))


def make(target: RemoteTarget, run_id: str, nodes: list[dict[str, Any]], *, conn: str = "gcp_test",
         task_id: str = "t", end_task: bool = False, poll: float = 0.05, **options: Any) -> BigQueryNodeTrigger:
    """``options``: further trigger arguments (parents, execution_timeout_s, ...)."""
    return BigQueryNodeTrigger(
        nodes=nodes, gcp_conn_id=conn, storage_conn_id=target.conn_id, remote_target_path=target.url,
        project=None, location="US", poll_interval=poll, labels={"Team": "Data Eng"}, end_task=end_task,
        run={"dag_id": "dag", "run_id": run_id, "task_id": task_id, "map_index": -1}, **options)


def model(node_id: str = "model.p.m") -> list[dict[str, Any]]:
    return [{"id": node_id, "kind": "model", "name": node_id.rsplit(".", 1)[-1]}]


async def collect(trigger: BigQueryNodeTrigger) -> list[TriggerEvent]:
    return [event async for event in trigger.run()]


def run_async(coro: Any) -> Any:
    """Run in a fresh loop and close that loop's shared session, as a triggerer would at exit."""
    async def main() -> Any:
        try:
            return await coro
        finally:
            await rest.close_session()

    return asyncio.run(main())


def payload_of(trigger: BigQueryNodeTrigger) -> dict[str, Any]:
    events = run_async(collect(trigger))
    assert len(events) == 1 and type(events[0]) is TriggerEvent, events
    return events[0].payload


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


# ---- outcomes -------------------------------------------------------------------------------------------


def test_model_script_creates_table_and_reports_job_stats_via_lifecycle_proxy(
        target: RemoteTarget, bq_client: Any, proxy: LifecycleProxy) -> None:
    run_id = new_run()
    table = f"{DATASET}.m_{uuid.uuid4().hex[:8]}"
    upload(target, run_id, {"model.p.m": NodeCapture(
        [f"create or replace table {table} as select 1 as x union all select 2 as x",
         f"insert into {table} (x) values (3)"], location="US")})

    payload = payload_of(make(target, run_id, model(), conn="gcp_proxy"))

    assert payload["status"] == "success", payload
    (job,) = payload["jobs"]
    assert job["state"] == "DONE" and job["job_id"].endswith("_0_0")
    assert job["link"] == (f"https://console.cloud.google.com/bigquery?project={PROJECT}"
                           f"&j=bq:US:{job['job_id']}&page=queryresults")
    assert set(job) >= {"duration_s", "total_bytes_processed", "total_slot_ms", "num_dml_affected_rows",
                        "cache_hit"}
    assert sorted(r.x for r in bq_client.query(f"select x from {table}").result()) == [1, 2, 3]
    config = proxy.configs[job["job_id"]]  # the emulator's jobs.get drops labels: read what was submitted
    assert config["query"]["useLegacySql"] is False
    assert config["labels"] == {"team": "data_eng", "airflow_dag": "dag", "airflow_task": "t",
                                "airflow_run": run_id, "dbt_node": "model_p_m"}


def test_end_task_success_ends_the_task_with_xcoms(file_target: RemoteTarget) -> None:
    run_id = new_run()
    upload(file_target, run_id, {"model.p.m": NodeCapture(["select 1"])})
    (event,) = run_async(collect(make(file_target, run_id, model(), end_task=True)))
    assert isinstance(event, TaskSuccessEvent)
    jobs = event.xcoms["return_value"]
    assert jobs[0]["state"] == "DONE" and event.xcoms["bigquery_job_link"] == jobs[0]["link"]


def test_bad_sql_fails_with_bigquerys_message(file_target: RemoteTarget) -> None:
    run_id = new_run()
    upload(file_target, run_id, {"model.p.bad": NodeCapture(["select * from no_such_ds.t"])})
    # end_task=True: a failure still goes to the worker as a plain event, so the task raises there.
    (event,) = run_async(collect(make(file_target, run_id, model("model.p.bad"), end_task=True)))
    assert type(event) is TriggerEvent
    assert event.payload["status"] == "failed"
    assert "Not found: Dataset" in event.payload["message"] and "reason: notFound" in event.payload["message"]
    assert "model.p.bad" in event.payload["message"]


DBT_TEST_SQL = ("select count(*) as failures, count(*) != 0 as should_warn, count(*) != 0 as should_error "
                "from ({rows}) dbt_internal_test")


@pytest.mark.parametrize("severity, rows, status, warned", [
    ("error", "select 1 as x union all select 2", "failed", False),
    ("warn", "select 1 as x union all select 2", "success", True),
    ("error", "select 1 as x from unnest([1]) where false", "success", False),
])
def test_dbt_test_verdict_follows_severity(file_target: RemoteTarget, severity: str, rows: str, status: str,
                                          warned: bool) -> None:
    run_id = new_run()
    upload(file_target, run_id, {"test.p.t": NodeCapture([DBT_TEST_SQL.format(rows=rows)])})
    nodes = [{"id": "test.p.t", "kind": "test", "name": "not_null_m_x", "severity": severity}]
    payload = payload_of(make(file_target, run_id, nodes))
    assert payload["status"] == status, payload
    if status == "failed":
        assert "Failure in test not_null_m_x" in payload["message"] and "got 2 results" in payload["message"]
    assert bool(payload["warnings"]) is warned
    if warned:
        assert "got 2 results" in payload["warnings"][0]


# ---- the remote files -----------------------------------------------------------------------------------


def _tamper(target: RemoteTarget, run_id: str, data: bytes | None) -> None:
    fs, _ = target.filesystem()
    path = fs._strip_protocol(f"{target.run_prefix('dag', run_id)}/nodes/model.p.m.sql")
    if data is None:
        fs.rm(path)
    else:
        fs.pipe_file(path, data)


@pytest.mark.parametrize("change, message", [
    (b"drop table everything", "does not match the index"),
    (None, "is missing"),
])
def test_changed_or_missing_sql_is_refused_nothing_submitted_via_lifecycle_proxy(
        target: RemoteTarget, proxy: LifecycleProxy, change: bytes | None, message: str) -> None:
    run_id = new_run()
    upload(target, run_id, {"model.p.m": NodeCapture(["select 1"])})
    _tamper(target, run_id, change)
    payload = payload_of(make(target, run_id, model(), conn="gcp_proxy"))
    assert payload["status"] == "failed"
    assert message in payload["message"] and "model.p.m" in payload["message"]
    assert "re-run the setup task" in payload["message"]
    assert not proxy.inserts and not proxy.gets


def test_missing_index_and_missing_entry_name_the_fix(file_target: RemoteTarget) -> None:
    payload = payload_of(make(file_target, new_run(), model()))
    assert payload["status"] == "failed" and "no index at" in payload["message"]
    run_id = new_run()
    upload(file_target, run_id, {"model.p.other": NodeCapture(["select 1"])})
    payload = payload_of(make(file_target, run_id, model()))
    assert payload["status"] == "failed" and "no entry for model.p.m" in payload["message"]


def test_memory_remote_path_cannot_be_read_by_the_triggerer() -> None:
    trigger = make(RemoteTarget.from_config("memory://cosmos"), new_run(), model())
    payload = payload_of(trigger)
    assert payload["status"] == "failed" and "cannot be read by the triggerer" in payload["message"]


def test_fallback_entry_resumes_on_the_worker_nothing_submitted_via_lifecycle_proxy(
        file_target: RemoteTarget, proxy: LifecycleProxy) -> None:
    run_id = new_run()
    upload(file_target, run_id, {"model.p.a": NodeCapture(["select 1"]),
                                 "model.p.py": NodeCapture(fallback="python model")})
    nodes = model("model.p.a") + model("model.p.py")
    payload = payload_of(make(file_target, run_id, nodes, conn="gcp_proxy", end_task=True))
    assert payload == {"status": "fallback", "reason": "model.p.py: python model", "after_parents": False}
    assert not proxy.inserts


# ---- job lifecycle through the proxy --------------------------------------------------------------------


def test_running_query_job_is_awaited_by_long_poll_and_seen_done_at_once_via_lifecycle_proxy(
        file_target: RemoteTarget, proxy: LifecycleProxy) -> None:
    """A poll interval far longer than the job: getQueryResults answers as the job ends, so the trigger neither
    waits out its interval nor polls jobs.get in a loop."""
    run_id = new_run()
    upload(file_target, run_id, {"model.p.m": NodeCapture(["select 1"])})
    proxy.set_hold(1.5)
    started = time.monotonic()
    payload = payload_of(make(file_target, run_id, model(), conn="gcp_proxy", poll=20.0))
    took = time.monotonic() - started
    assert payload["status"] == "success"
    assert 1.5 <= took < 4.0, took
    (job_id,) = proxy.inserts
    assert proxy.gets[job_id] == 2, proxy.gets  # the lookup before insert, then the final status once DONE


def test_restarted_trigger_reattaches_without_cancel_via_lifecycle_proxy(file_target: RemoteTarget,
                                                                         proxy: LifecycleProxy) -> None:
    run_id = new_run()
    upload(file_target, run_id, {"model.p.m": NodeCapture(["select 1"])})
    proxy.set_hold(0.8)

    async def scenario() -> list[TriggerEvent]:
        first = asyncio.create_task(collect(make(file_target, run_id, model(), conn="gcp_proxy")))
        await wait_for(lambda: bool(proxy.inserts))
        first.cancel()  # a triggerer restart: the task is cancelled, on_kill is not called
        with pytest.raises(asyncio.CancelledError):
            await first
        return await collect(make(file_target, run_id, model(), conn="gcp_proxy"))

    (event,) = run_async(scenario())
    assert event.payload["status"] == "success"
    assert list(proxy.inserts.values()) == [1] and not proxy.cancels


def test_on_kill_cancels_the_job_then_a_new_try_runs_attempt_1_via_lifecycle_proxy(
        file_target: RemoteTarget, proxy: LifecycleProxy) -> None:
    run_id = new_run()
    upload(file_target, run_id, {"model.p.m": NodeCapture(["select 1"])})
    proxy.set_hold(30)

    async def scenario() -> list[TriggerEvent]:
        trigger = make(file_target, run_id, model(), conn="gcp_proxy")
        task = asyncio.create_task(collect(trigger))
        await wait_for(lambda: bool(proxy.inserts))
        task.cancel()  # what the triggerer does for a user action, followed by on_kill()
        with pytest.raises(asyncio.CancelledError):
            await task
        await trigger.on_kill()
        proxy.set_hold(0)
        return await collect(make(file_target, run_id, model(), conn="gcp_proxy"))

    (event,) = run_async(scenario())
    assert list(proxy.cancels.values()) == [1]
    assert event.payload["status"] == "success"
    assert event.payload["jobs"][0]["job_id"].endswith("_0_1")  # the cancelled attempt 0 is not reused


def test_execution_timeout_cancels_the_running_job_via_lifecycle_proxy(file_target: RemoteTarget,
                                                                      proxy: LifecycleProxy) -> None:
    """On a timeout Airflow cancels the trigger's task without calling on_kill; the deadline it set tells why."""
    run_id = new_run()
    upload(file_target, run_id, {"model.p.m": NodeCapture(["select 1"])})
    proxy.set_hold(30)

    async def scenario() -> None:
        trigger = make(file_target, run_id, model(), conn="gcp_proxy")
        trigger.timeout_after = datetime.now(timezone.utc) + timedelta(seconds=0.5)  # as the triggerer sets it
        task = asyncio.create_task(collect(trigger))
        await wait_for(lambda: bool(proxy.inserts))
        await asyncio.sleep(0.6)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert list(proxy.cancels.values()) == [1], proxy.cancels
        await trigger.on_kill()  # Airflow does not call it on a timeout; if it did, no second cancel

    run_async(scenario())
    assert list(proxy.cancels.values()) == [1], proxy.cancels


def test_execution_timeout_in_triggerer_mode_cancels_the_job_counted_from_parents_end_via_lifecycle_proxy(
        file_target: RemoteTarget, proxy: LifecycleProxy) -> None:
    """Waiting for parents in the trigger: no Airflow deadline is set; the trigger times its own jobs, cancels the
    one in flight and ends with a timeout event."""
    run_id = new_run()
    upload(file_target, run_id, {"model.p.m": NodeCapture(["select 1"])})
    proxy.set_hold(30)

    async def scenario() -> tuple[list[TriggerEvent], float]:
        trigger = make(file_target, run_id, model(), conn="gcp_proxy", parents=["up"], execution_timeout_s=1.0)
        task = asyncio.create_task(collect(trigger))
        await asyncio.sleep(1.5)  # longer than the timeout: waiting for a parent does not count against it
        assert not proxy.inserts and not task.done()
        released = time.monotonic()
        parent_wait.publish("dag", run_id, "up", parent_wait.SUCCESS)
        events = await asyncio.wait_for(task, timeout=15)
        return events, time.monotonic() - released

    (event,), took = run_async(scenario())
    assert event.payload["status"] == "timeout", event.payload
    assert "execution_timeout of 1 s" in event.payload["message"], event.payload
    assert list(proxy.inserts.values()) == [1], proxy.inserts
    assert list(proxy.cancels.values()) == [1], proxy.cancels
    assert 1.0 <= took < 10, took


def _hook_on_worker(target: RemoteTarget, run_id: str) -> Any:
    """An on-run-start-like task awaiting its job on the worker, and the context Airflow would hand it."""
    from types import SimpleNamespace

    from cosmos_async.operators.bigquery import DbtBigQueryAsyncOperator

    op = DbtBigQueryAsyncOperator(task_id="t", nodes=model(), gcp_conn_id="gcp_proxy", remote_target_path=target.url,
                                  remote_target_path_conn_id=target.conn_id, location="US", poll_interval=0.05,
                                  await_on_worker=True)
    ti = SimpleNamespace(dag_id="dag", run_id=run_id, task_id="t", map_index=-1, xcom_push=lambda **_: None)
    return op, {"ti": ti}


def _after_insert(proxy: LifecycleProxy, action: Any) -> threading.Thread:
    def wait_then_act() -> None:
        deadline = time.monotonic() + 20
        while not proxy.inserts and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        action()

    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


def test_task_stopped_while_awaiting_on_the_worker_cancels_its_job_via_lifecycle_proxy(
        file_target: RemoteTarget, proxy: LifecycleProxy) -> None:
    """A task awaiting its job on the worker (on-run-start when models wait in the triggerer) is stopped as Airflow
    stops a task (mark failed: SIGTERM, whose handler calls on_kill): its job is cancelled once, the task ends."""
    from cosmos_async.operators.bigquery import TaskStopped

    run_id = new_run()
    upload(file_target, run_id, {"model.p.m": NodeCapture(["select 1"])})
    proxy.set_hold(30)
    op, context = _hook_on_worker(file_target, run_id)
    previous = signal.signal(signal.SIGTERM, lambda *_: op.on_kill())  # Airflow's task runner does this
    try:
        _after_insert(proxy, lambda: os.kill(os.getpid(), signal.SIGTERM))
        started = time.monotonic()
        with pytest.raises(TaskStopped, match="stopped while its BigQuery job ran"):
            op.execute(context)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert list(proxy.inserts.values()) == [1] and list(proxy.cancels.values()) == [1], proxy.cancels
    assert time.monotonic() - started < 10
    op.on_kill()  # called again after the task ended (Airflow's timeout path does): nothing more happens
    assert list(proxy.cancels.values()) == [1], proxy.cancels


def test_execution_timeout_while_awaiting_on_the_worker_cancels_its_job_via_lifecycle_proxy(
        file_target: RemoteTarget, proxy: LifecycleProxy) -> None:
    """Airflow's execution_timeout on the worker (SIGALRM, then on_kill): the job in flight is cancelled once."""
    from airflow.sdk.exceptions import AirflowTaskTimeout
    from airflow.sdk.execution_time.timeout import timeout

    run_id = new_run()
    upload(file_target, run_id, {"model.p.m": NodeCapture(["select 1"])})
    proxy.set_hold(30)
    op, context = _hook_on_worker(file_target, run_id)
    # Airflow's timeout fires by SIGALRM: sent here once the job runs, so a slow start cannot make it come early.
    _after_insert(proxy, lambda: os.kill(os.getpid(), signal.SIGALRM))
    with pytest.raises(AirflowTaskTimeout):
        try:
            with timeout(120):  # what Airflow wraps execute in
                op.execute(context)
        except AirflowTaskTimeout:
            op.on_kill()
            raise
    assert list(proxy.inserts.values()) == [1] and list(proxy.cancels.values()) == [1], proxy.cancels


def test_done_job_is_not_run_again_via_lifecycle_proxy(file_target: RemoteTarget, proxy: LifecycleProxy) -> None:
    run_id = new_run()
    upload(file_target, run_id, {"model.p.m": NodeCapture(["select 1"])})
    first = payload_of(make(file_target, run_id, model(), conn="gcp_proxy"))
    second = payload_of(make(file_target, run_id, model(), conn="gcp_proxy"))
    assert first["status"] == second["status"] == "success"
    assert first["jobs"][0]["job_id"] == second["jobs"][0]["job_id"]
    assert list(proxy.inserts.values()) == [1]


def test_failed_attempt_is_followed_by_attempt_1_via_lifecycle_proxy(file_target: RemoteTarget, bq_client: Any,
                                                                     proxy: LifecycleProxy) -> None:
    run_id = new_run()
    source = f"{DATASET}.src_{uuid.uuid4().hex[:8]}"
    upload(file_target, run_id, {"model.p.m": NodeCapture([f"select * from {source}"])})
    failed = payload_of(make(file_target, run_id, model(), conn="gcp_proxy"))
    assert failed["status"] == "failed" and failed["jobs"][0]["job_id"].endswith("_0_0")
    bq_client.query(f"create table {source} as select 1 as x").result()
    retried = payload_of(make(file_target, run_id, model(), conn="gcp_proxy"))
    assert retried["status"] == "success" and retried["jobs"][0]["job_id"].endswith("_0_1")
    assert sorted(proxy.inserts.values()) == [1, 1]


def test_setup_rerun_makes_earlier_jobs_stale_via_lifecycle_proxy(file_target: RemoteTarget,
                                                                 proxy: LifecycleProxy) -> None:
    run_id = new_run()
    upload(file_target, run_id, {"model.p.m": NodeCapture(["select 1"])})
    assert payload_of(make(file_target, run_id, model(), conn="gcp_proxy"))["status"] == "success"
    time.sleep(0.01)
    upload(file_target, run_id, {"model.p.m": NodeCapture(["select 2"])})  # the DAG run was cleared
    again = payload_of(make(file_target, run_id, model(), conn="gcp_proxy"))
    assert again["status"] == "success" and again["jobs"][0]["job_id"].endswith("_0_1")


def test_submit_and_poll_retried_fault_injected_503_429_reset_via_lifecycle_proxy(
        file_target: RemoteTarget, proxy: LifecycleProxy) -> None:
    run_id = new_run()
    upload(file_target, run_id, {"model.p.m": NodeCapture(["select 1"])})
    proxy.set_hold(0.3)
    proxy.add_fault("POST", r"/jobs$", 503, count=2)
    proxy.add_fault("GET", r"/jobs/[^/]+$", 429, count=2)
    proxy.add_fault("GET", r"/jobs/[^/]+$", "reset", count=1)
    payload = payload_of(make(file_target, run_id, model(), conn="gcp_proxy"))
    assert payload["status"] == "success", payload
    assert proxy.faults_fired == {"503": 2, "429": 2, "reset": 1}
    assert list(proxy.inserts.values()) == [1]


def test_lost_insert_answer_attaches_on_409_fault_injected_503_via_lifecycle_proxy(
        file_target: RemoteTarget, proxy: LifecycleProxy) -> None:
    run_id = new_run()
    upload(file_target, run_id, {"model.p.m": NodeCapture(["select 1"])})
    # The emulator accepts the insert, the client gets a 503: the retry must hear 409 and attach.
    proxy.add_fault("POST", r"/jobs$", 503, count=1, after_upstream=True)
    payload = payload_of(make(file_target, run_id, model(), conn="gcp_proxy"))
    assert payload["status"] == "success" and payload["jobs"][0]["job_id"].endswith("_0_0")
    assert list(proxy.inserts.values()) == [1]


def test_permanent_error_is_not_retried(file_target: RemoteTarget, proxy: LifecycleProxy) -> None:
    run_id = new_run()
    upload(file_target, run_id, {"model.p.m": NodeCapture(["select 1"])})
    proxy.add_fault("POST", r"/jobs$", 403, count=5)
    payload = payload_of(make(file_target, run_id, model(), conn="gcp_proxy"))
    assert payload["status"] == "failed" and "HTTP 403" in payload["message"]
    assert proxy.faults_fired == {"403": 1}


# ---- serialization, sharing, auth -----------------------------------------------------------------------


def test_serialize_round_trip(file_target: RemoteTarget) -> None:
    trigger = make(file_target, "r", [{"id": "test.p.t", "kind": "test", "name": "t", "severity": "warn"}])
    classpath, kwargs = trigger.serialize()
    assert classpath == "cosmos_async_triggers.bigquery.BigQueryNodeTrigger"
    json.dumps(kwargs)
    assert BigQueryNodeTrigger(**kwargs).serialize() == (classpath, kwargs)


def test_trigger_kwargs_of_the_operator_build_the_trigger() -> None:
    from cosmos_async.operators.bigquery import TRIGGER_CLASSPATH, DbtBigQueryAsyncOperator

    op = DbtBigQueryAsyncOperator(task_id="m", nodes=model(), gcp_conn_id="gcp_test", remote_target_path="file:///x",
                                  remote_target_path_conn_id=None, location="US")
    kwargs = op.trigger_kwargs(end_task=True)
    assert BigQueryNodeTrigger(**kwargs).serialize() == (TRIGGER_CLASSPATH, kwargs)


def test_200_concurrent_triggers_share_one_session(file_target: RemoteTarget) -> None:
    run_id = new_run()
    upload(file_target, run_id, {"model.p.m": NodeCapture(["select 1 as x"])})

    async def scenario() -> tuple[list[list[TriggerEvent]], bool, int]:
        created = rest.sessions_created()
        session = rest.get_session()
        events = await asyncio.gather(*(collect(make(file_target, run_id, model(), task_id=f"t{i}"))
                                        for i in range(200)))
        return events, rest.get_session() is session, rest.sessions_created() - created

    started = time.monotonic()
    results, same_session, new_sessions = run_async(scenario())
    assert same_session and new_sessions == 1
    assert [e[0].payload["status"] for e in results] == ["success"] * 200
    assert len({e[0].payload["jobs"][0]["job_id"] for e in results}) == 200
    assert time.monotonic() - started < 30


def test_service_account_token_is_signed_cached_and_sent(file_target: RemoteTarget) -> None:
    """keyfile_dict → a JWT signed with the key, exchanged at a local token endpoint, cached per process."""
    from aiohttp import web
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    grants: list[str] = []
    seen_auth: list[str] = []

    async def token_endpoint(request: web.Request) -> web.Response:
        grants.append((await request.post())["assertion"])
        return web.json_response({"access_token": "tok-123", "expires_in": 3600, "token_type": "Bearer"})

    async def storage(request: web.Request) -> web.Response:
        seen_auth.append(request.headers.get("Authorization", ""))
        return web.Response(status=404, body=b'{"error": {"code": 404, "message": "nope"}}')

    async def scenario() -> list[TriggerEvent]:
        app = web.Application()
        app.router.add_post("/token", token_endpoint)
        app.router.add_get("/storage/v1/b/{bucket}/o/{name:.*}", storage)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        key = {"type": "service_account", "project_id": PROJECT, "private_key_id": "k1", "private_key": pem,
               "client_email": "sa@demo-proj.iam.gserviceaccount.com", "token_uri": f"{url}/token"}
        conn = json.dumps({"conn_type": "google_cloud_platform",
                           "extra": {"keyfile_dict": json.dumps(key), "storage_api_endpoint": url}})
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AIRFLOW_CONN_GCP_SA", conn)
            auth.forget_tokens()
            trigger = BigQueryNodeTrigger(
                nodes=model(), gcp_conn_id="gcp_sa", storage_conn_id="gcp_sa", remote_target_path="gs://b/p",
                project=None, location="US", run={"dag_id": "dag", "run_id": "r", "task_id": "t"})
            events = [*(await collect(trigger)), *(await collect(trigger))]
        await runner.cleanup()
        return events

    events = run_async(scenario())
    assert all(e.payload["status"] == "failed" and "no index at gs://b/p" in e.payload["message"] for e in events)
    assert len(grants) == 1 and grants[0].count(".") == 2  # one signed JWT; the second trigger used the cache
    assert seen_auth == ["Bearer tok-123"] * 2
    assert "PRIVATE KEY" not in json.dumps([e.payload for e in events])


def test_unreadable_key_error_has_no_key_material() -> None:
    secret = "-----BEGIN PRIVATE KEY-----SECRETSECRET"
    conn = auth.GcpSource.from_extras("c", {"extra__google_cloud_platform__keyfile_dict":
                                                json.dumps({"private_key": secret})})
    auth.forget_tokens()
    with pytest.raises(auth.GcpAuthError) as info:
        run_async(auth.get_token(conn))
    assert "SECRET" not in str(info.value) and info.value.__cause__ is None and info.value.__context__ is None
    assert "secret" not in repr(conn).lower()


def test_run_ids_come_from_the_task_instance_when_started_from_the_trigger(file_target: RemoteTarget) -> None:
    """start_from_trigger: the scheduler builds the trigger with run=None; the triggerer sets task_instance."""
    from types import SimpleNamespace

    from cosmos_async_triggers.layout import job_id_base

    run_id = new_run()
    upload(file_target, run_id, {"model.p.m": NodeCapture(["select 1"])})
    trigger = make(file_target, run_id, model(), end_task=True)
    trigger.run_info = None
    trigger.task_instance = SimpleNamespace(dag_id="dag", run_id=run_id, task_id="from_ti", map_index=3)
    (event,) = run_async(collect(trigger))
    assert isinstance(event, TaskSuccessEvent)
    assert event.xcoms["return_value"][0]["job_id"] == f"{job_id_base('dag', 'from_ti', run_id, 3)}_0_0"


@pytest.mark.parametrize("state, cancelled", [("deferred", 0), ("failed", 1), (None, 1)])
def test_on_kill_keeps_the_job_of_a_task_still_deferred_via_lifecycle_proxy(
        file_target: RemoteTarget, proxy: LifecycleProxy, monkeypatch: pytest.MonkeyPatch, state: str | None,
        cancelled: int) -> None:
    """The triggerer also calls on_kill for a trigger another triggerer took over; the task is then still
    deferred. The supervisor channel is a stand-in answering GetTaskStates like the triggerer's supervisor."""
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.comms import GetTaskStates, TaskStatesResult

    run_id = new_run()
    upload(file_target, run_id, {"model.p.m": NodeCapture(["select 1"])})
    proxy.set_hold(30)
    asked: list[GetTaskStates] = []

    class SupervisorChannel:
        async def asend(self, msg: Any) -> TaskStatesResult | None:
            if not isinstance(msg, GetTaskStates):
                return None  # e.g. MaskSecret from Airflow's connection lookup
            asked.append(msg)
            return TaskStatesResult(task_states={run_id: {"t": state}} if state else {})

    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", SupervisorChannel(), raising=False)

    async def scenario() -> None:
        trigger = make(file_target, run_id, model(), conn="gcp_proxy")
        task = asyncio.create_task(collect(trigger))
        await wait_for(lambda: bool(proxy.inserts))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await trigger.on_kill()

    run_async(scenario())
    assert asked[0].task_ids == ["t"] and asked[0].run_ids == [run_id] and asked[0].map_index == -1
    assert sum(proxy.cancels.values()) == cancelled
