"""A project in a non-US location (``europe-west2``): capture → upload → trigger, every job in that location.

BigQuery finds a job only in its own location: a jobs.get, jobs.cancel or getQueryResults without the job's
``location`` answers 404 for a job outside the US and EU multi-regions. The recorded requests (the session's
contract front, tests/support/contract_front.py) show that every call about a job names its location, that
seeds' load jobs are created there, and that the tables match what plain ``dbt build`` makes in that location.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cosmos_async_triggers.bigquery import BigQueryNodeTrigger
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from cosmos_async.config import ProfileConfig
from cosmos_async.dbt.capture import capture_project
from cosmos_async.dbt.captured import Capture, NodeCapture
from cosmos_async.remote import RemoteTarget, upload_capture
from tests.integration.test_trigger import collect, run_async, wait_for
from tests.support.api_contract import LOG
from tests.support.bq_lifecycle_proxy import LifecycleProxy
from tests.support.dbt_oracle import EXAMPLE_PROJECT, built_tables, dbt_build

PROJECT = "demo-proj"
LOCATION = "europe-west2"
JOB_CALLS = ("bigquery.jobs.get", "bigquery.jobs.getQueryResults", "bigquery.jobs.cancel")


pytestmark = pytest.mark.usefixtures("emulator_conns")


@pytest.fixture(scope="module")
def client(bigquery_emulator) -> bigquery.Client:
    return bigquery.Client(project=PROJECT, credentials=AnonymousCredentials(),
                           client_options=ClientOptions(api_endpoint=bigquery_emulator.endpoint))


def _project_in(dest: Path) -> Path:
    """corner_shop with its profile's location set to LOCATION."""
    shutil.copytree(EXAMPLE_PROJECT, dest, ignore=shutil.ignore_patterns("target", "target-*", "logs"))
    profiles = dest / "profiles.yml"
    text = profiles.read_text()
    assert "location: US" in text
    profiles.write_text(text.replace("location: US", f"location: {LOCATION}"))
    return dest


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, bigquery_emulator) -> Iterator[tuple[Capture, str, str]]:
    """(the capture for dataset ``eu_ours``, that dataset, ``eu_oracle`` which plain dbt built)."""
    project = _project_in(tmp_path_factory.mktemp("eu") / "corner_shop")
    tag = uuid.uuid4().hex[:6]
    ours, oracle = f"eu_ours_{tag}", f"eu_oracle_{tag}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BIGQUERY_API_ENDPOINT", bigquery_emulator.endpoint)
        mp.setenv("BIGQUERY_DATASET", ours)
        profile = ProfileConfig(profile_name="corner_shop", target_name="dev",
                                profiles_yml_filepath=project / "profiles.yml")
        capture = capture_project(project, profile, env={"BIGQUERY_DATASET": ours,
                                                         "BIGQUERY_API_ENDPOINT": bigquery_emulator.endpoint})
        mp.setenv("BIGQUERY_DATASET", oracle)
        dbt_build(project)
        yield capture, ours, oracle


def _trigger(target: RemoteTarget, run_id: str, node_id: str) -> BigQueryNodeTrigger:
    kind = "hook" if "." not in node_id else node_id.split(".")[0]
    # location=None: the job's location comes from the run's index, i.e. from the jobs dbt itself made.
    return BigQueryNodeTrigger(
        nodes=[{"id": node_id, "kind": kind, "name": node_id.rsplit(".", 1)[-1]}], gcp_conn_id="gcp_proxy",
        storage_conn_id=None, remote_target_path=target.url, project=None, location=None, poll_interval=0.05,
        run={"dag_id": "eu_dag", "run_id": run_id, "task_id": node_id.replace(".", "__"), "map_index": -1})


def _runnable(capture: Capture) -> list[str]:
    """The nodes the triggers run, in dbt's order; only the snapshot may be left to a worker (compiled after its
    parent when it merges from a staging select that reads what this run builds)."""
    fallbacks = {n for n, node in capture.nodes.items() if node.fallback}
    assert {n.split(".")[0] for n in fallbacks} <= {"snapshot"}, {n: capture.nodes[n].fallback for n in fallbacks}
    return [n for n in capture.nodes if n not in fallbacks]


def test_every_job_of_a_europe_west2_project_runs_there_and_builds_what_dbt_builds(
        shop, tmp_path: Path, client: bigquery.Client, proxy: LifecycleProxy) -> None:
    capture, ours, oracle = shop
    nodes = _runnable(capture)
    assert {capture.nodes[n].location for n in nodes if capture.nodes[n].statements} == {LOCATION}
    target = RemoteTarget.from_config(f"file://{tmp_path}/remote")
    run_id = f"manual__{uuid.uuid4().hex[:10]}"
    upload_capture(target, "eu_dag", run_id, capture, set(capture.nodes))
    proxy.reset()
    proxy.set_hold(0.15)  # a RUNNING phase: the trigger polls jobs.get before each job is DONE
    mark = LOG.recorded
    try:
        for node_id in ["on_run_start", *nodes, "on_run_end"]:
            (event,) = run_async(collect(_trigger(target, run_id, node_id)))
            assert event.payload["status"] == "success", (node_id, event.payload)
    finally:
        proxy.set_hold(0.0)
    ours_requests = LOG.requests_since(mark)  # the triggers' requests, before this test's own queries

    built, expected = built_tables(client, ours), built_tables(client, oracle)
    assert len(built) >= 8 and built == {name: rows for name, rows in expected.items() if name in built}

    inserts = [c for c in ours_requests if c.method_id == "bigquery.jobs.insert"]
    loads = [c for c in inserts if "load" in (c.resource or {}).get("configuration", {})]
    assert loads and len(inserts) > len(loads), "expected query jobs and the seeds' load jobs"
    assert {(c.resource or {}).get("jobReference", {}).get("location") for c in inserts} == {LOCATION}
    # dbt creates datasets with ``create schema`` in the job's location, so the dataset lands there too (the
    # emulator makes every DDL-created dataset a US one, so the dataset's own location is not asserted here).
    queries = [(c.resource or {}).get("configuration", {}).get("query", {}).get("query", "") for c in inserts]
    assert any("create schema if not exists" in q.lower() for q in queries)
    # The emulator reports every job in US and names upload jobs itself (bqemu_…): the trigger names a job by the
    # location it submitted it in, also when it follows a job the emulator renamed.
    polls = [c for c in ours_requests if c.method_id in JOB_CALLS]
    assert polls and {c.query().get("location") for c in polls} == {LOCATION}, [c.target for c in polls][:5]


def test_cancel_of_a_europe_west2_job_names_its_location(shop, tmp_path: Path, proxy: LifecycleProxy) -> None:
    target = RemoteTarget.from_config(f"file://{tmp_path}/remote")
    run_id = f"manual__{uuid.uuid4().hex[:10]}"
    node = NodeCapture(["select 1 as x"], location=LOCATION)
    upload_capture(target, "eu_dag", run_id, Capture(nodes={"model.p.m": node}, on_run_start=NodeCapture(),
                                                     on_run_end=NodeCapture()), {"model.p.m"})
    proxy.reset()
    proxy.set_hold(30)
    mark = LOG.recorded

    async def scenario() -> None:
        trigger = _trigger(target, run_id, "model.p.m")
        task = asyncio.create_task(collect(trigger))
        await wait_for(lambda: bool(proxy.inserts))
        task.cancel()  # a user action: the triggerer cancels the trigger, then calls on_kill
        with pytest.raises(asyncio.CancelledError):
            await task
        await trigger.on_kill()

    try:
        run_async(scenario())
    finally:
        proxy.set_hold(0.0)
    assert list(proxy.cancels.values()) == [1]
    cancels = [c for c in LOG.requests_since(mark) if c.method_id == "bigquery.jobs.cancel"]
    assert [c.query().get("location") for c in cancels] == [LOCATION]
