"""Faults on the storage side: the setup task's upload (gcsfs) and the trigger's SQL fetch (REST), on the GCS emulator.

A :class:`~tests.support.bq_lifecycle_proxy.LifecycleProxy` sits in front of the GCS emulator (it forwards paths
that are not BigQuery's unchanged) and injects 429/503, dropped connections and delays by rule; the shared ``proxy`` in
front of the BigQuery emulator counts the jobs the trigger submits. Transient faults must be retried and leave the
run complete; a permanent one must fail with one message naming the object and the cause, with nothing submitted.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from airflow.triggers.base import TriggerEvent
from cosmos_async_triggers import rest
from cosmos_async_triggers.bigquery import BigQueryNodeTrigger

from cosmos_async.capture import Capture, LoadCapture, NodeCapture
from cosmos_async.remote import RemoteStorageError, RemoteTarget, upload_capture
from tests.support.bq_lifecycle_proxy import LifecycleProxy
from tests.support.connections import emulator_connections

PROJECT = "demo-proj"
UPLOAD = r"^/upload/storage/v1/b/"  # gcsfs's simple/multipart object uploads
FETCH = r"^/storage/v1/b/[^/]+/o/.+"  # the trigger's object reads (alt=media)


@pytest.fixture(scope="module")
def storage_proxy(gcs_emulator) -> Iterator[LifecycleProxy]:
    p = LifecycleProxy(gcs_emulator.extra["direct"]).start()
    yield p
    p.stop()


@pytest.fixture(scope="module", autouse=True)
def connections(bigquery_emulator, proxy, storage_proxy) -> Iterator[None]:
    # gcs_test reaches the GCS emulator through storage_proxy; gcp_proxy reaches BigQuery through proxy.
    with emulator_connections(PROJECT, bigquery_emulator.endpoint, proxy.url, storage_proxy.url):
        yield


@pytest.fixture(autouse=True)
def clean(storage_proxy: LifecycleProxy, proxy: LifecycleProxy) -> None:
    storage_proxy.reset()
    proxy.reset()


@pytest.fixture
def target(gcs_emulator) -> RemoteTarget:
    return RemoteTarget.from_config(f"gs://{gcs_emulator.extra['bucket']}/storage-faults", "gcs_test")


def capture_of(n: int) -> tuple[Capture, set[str]]:
    nodes = {f"model.p.m{i}": NodeCapture([f"select {i} as x"]) for i in range(n)}
    nodes["seed.p.s"] = NodeCapture(["create or replace table d.s (a int64)"],
                                    loads=[LoadCapture({"load": {"sourceFormat": "CSV"}}, b"a\n1\n", 1)])
    return Capture(nodes=nodes, on_run_start=NodeCapture(), on_run_end=NodeCapture()), set(nodes)


def uploaded(target: RemoteTarget, prefix: str) -> dict[str, str]:
    """sha256 of every object under the run prefix, read straight from the emulator (no faults)."""
    fs, _ = target.filesystem()
    fs.invalidate_cache()
    root = prefix.split("://", 1)[1]
    return {path[len(root) + 1:]: hashlib.sha256(fs.cat_file(path)).hexdigest() for path in fs.find(root)}


def expected(index: dict[str, Any]) -> dict[str, str]:
    files = {}
    for entry in index["nodes"].values():
        for item in entry.get("steps", [entry]):
            files[item["path"]] = item["sha256"]
    return files


def run_trigger(target: RemoteTarget, run_id: str, node_id: str) -> dict[str, Any]:
    trigger = BigQueryNodeTrigger(
        nodes=[{"id": node_id, "kind": "model", "name": node_id.rsplit(".", 1)[-1]}], gcp_conn_id="gcp_proxy",
        storage_conn_id="gcs_test", remote_target_path=target.url, project=None, location="US", poll_interval=0.05,
        run={"dag_id": "dag", "run_id": run_id, "task_id": "t", "map_index": -1})

    async def main() -> list[TriggerEvent]:
        try:
            return [event async for event in trigger.run()]
        finally:
            await rest.close_session()

    (event,) = asyncio.run(main())
    return event.payload


def test_upload_retried_fault_injected_503_429_reset_lost_answer(target: RemoteTarget,
                                                                 storage_proxy: LifecycleProxy) -> None:
    capture, wanted = capture_of(6)
    run_id = f"up-{uuid.uuid4().hex[:8]}"
    storage_proxy.add_fault("POST", UPLOAD, 503, count=2)
    storage_proxy.add_fault("POST", UPLOAD, 429, count=1)
    storage_proxy.add_fault("POST", UPLOAD, "reset", count=1)
    storage_proxy.add_fault("POST", UPLOAD, 503, count=1, after_upstream=True)  # written, the answer lost
    index = upload_capture(target, "dag", run_id, capture, wanted)

    assert storage_proxy.faults_fired == {"503": 3, "429": 1, "reset": 1}
    files = uploaded(target, target.run_prefix("dag", run_id))
    assert files.pop("index.json")
    assert files == expected(index), "every file is present once, with the content the index promises"


def test_upload_refused_fails_setup_with_one_message_and_no_index(target: RemoteTarget,
                                                                  storage_proxy: LifecycleProxy) -> None:
    capture, wanted = capture_of(3)
    run_id = f"deny-{uuid.uuid4().hex[:8]}"
    storage_proxy.add_fault("POST", UPLOAD, 403, count=1000)
    with pytest.raises(RemoteStorageError) as err:
        upload_capture(target, "dag", run_id, capture, wanted)

    message = str(err.value)
    prefix = target.run_prefix("dag", run_id)
    assert f"cannot write the run's SQL under {prefix}" in message and "may write to it" in message, message
    # No index: the run is visibly incomplete, and every node task refuses it instead of running half of it.
    assert "index.json" not in uploaded(target, prefix)


def test_sql_fetch_retried_fault_injected_503_429_reset_delay(target: RemoteTarget, storage_proxy: LifecycleProxy,
                                                              proxy: LifecycleProxy) -> None:
    capture, wanted = capture_of(1)
    run_id = f"fetch-{uuid.uuid4().hex[:8]}"
    upload_capture(target, "dag", run_id, capture, wanted)
    storage_proxy.add_fault("GET", FETCH, 503, count=2)
    storage_proxy.add_fault("GET", FETCH, 429, count=1)
    storage_proxy.add_fault("GET", FETCH, "reset", count=1)
    storage_proxy.add_fault("GET", FETCH, "delay", count=1, delay_s=1.0)
    payload = run_trigger(target, run_id, "model.p.m0")

    assert payload["status"] == "success", payload
    assert storage_proxy.faults_fired == {"503": 2, "429": 1, "reset": 1, "delay": 1}
    assert list(proxy.inserts.values()) == [1], "the node's job is submitted once"


def test_sql_fetch_failing_for_good_gives_up_bounded_and_submits_nothing(
        target: RemoteTarget, storage_proxy: LifecycleProxy, proxy: LifecycleProxy) -> None:
    capture, wanted = capture_of(1)
    run_id = f"gone-{uuid.uuid4().hex[:8]}"
    upload_capture(target, "dag", run_id, capture, wanted)
    storage_proxy.add_fault("GET", FETCH, 503, count=1000)
    payload = run_trigger(target, run_id, "model.p.m0")

    assert payload["status"] == "failed"
    assert "index.json" in payload["message"] and "HTTP 503" in payload["message"], payload["message"]
    assert "gave up after" in payload["message"], payload["message"]
    assert storage_proxy.faults_fired["503"] <= rest.DEFAULT_RETRY.attempts, "retries are bounded"
    assert proxy.inserts == {}, "nothing was submitted"
