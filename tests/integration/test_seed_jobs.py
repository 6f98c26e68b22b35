"""Seeds as BigQuery load jobs: capture (dbt against the recording endpoint) → upload (file:// or the GCS
emulator, the setup task's own code) → the real trigger against the BigQuery emulator, compared with what
``dbt seed`` builds.

Emulator limit (see test_load_job_ids_follow_the_emulator): the emulator names upload jobs itself,
so reattaching to a load job by its deterministic id can only be shown on real BigQuery.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from cosmos_async.capture import Capture, LoadCapture, NodeCapture, ScriptCapture, capture_project
from cosmos_async.config import ProfileConfig
from cosmos_async.remote import RemoteTarget, upload_capture
from tests.integration.test_trigger import payload_of
from tests.support.bq_lifecycle_proxy import LifecycleProxy
from tests.support.connections import emulator_connections, remote_target
from tests.support.contract_front import answers_checked
from tests.support.dbt_oracle import dbt_build, table_rows

PROJECT = "demo-proj"
CORNER_SHOP = Path(__file__).resolve().parents[2] / "dev" / "dags" / "dbt" / "corner_shop"
SEEDS = ["seed.corner_shop.raw_customers", "seed.corner_shop.raw_orders", "seed.corner_shop.raw_payments"]


@pytest.fixture(scope="module")
def client(bigquery_emulator) -> bigquery.Client:
    return bigquery.Client(project=PROJECT, credentials=AnonymousCredentials(),
                           client_options=ClientOptions(api_endpoint=bigquery_emulator.endpoint))


@pytest.fixture(scope="module", autouse=True)
def connections(bigquery_emulator, gcs_emulator, proxy) -> Iterator[None]:
    with emulator_connections(PROJECT, bigquery_emulator.endpoint, proxy.url, gcs_emulator.endpoint) as mp:
        mp.setenv("BIGQUERY_API_ENDPOINT", bigquery_emulator.endpoint)
        yield


@pytest.fixture(autouse=True)
def clean_proxy(proxy: LifecycleProxy) -> Iterator[None]:
    proxy.reset()
    yield
    proxy.reset()


def _copy_project(dest: Path) -> Path:
    shutil.copytree(CORNER_SHOP, dest, ignore=shutil.ignore_patterns("target", "target-*", "logs", "dbt_packages"))
    return dest


def _capture(project: Path, dataset: str) -> Capture:
    os.environ["BIGQUERY_DATASET"] = dataset
    profile = ProfileConfig(profile_name="corner_shop", target_name="dev",
                            profiles_yml_filepath=project / "profiles.yml")
    return capture_project(project, profile, select=["resource_type:seed"])


def _oracle(project: Path, dataset: str) -> None:
    os.environ["BIGQUERY_DATASET"] = dataset
    dbt_build(project, seeds_only=True)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, bigquery_emulator) -> Iterator[tuple[Path, str, Capture]]:
    """corner_shop captured once (seeds only) for dataset ``seeds_ours``; dbt seed builds ``seeds_oracle``."""
    previous = os.environ.get("BIGQUERY_DATASET")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BIGQUERY_API_ENDPOINT", bigquery_emulator.endpoint)
        project = _copy_project(tmp_path_factory.mktemp("seeds") / "corner_shop")
        capture = _capture(project, "seeds_ours")
        _oracle(project, "seeds_oracle")
        yield project, "seeds_ours", capture
    if previous is None:
        os.environ.pop("BIGQUERY_DATASET", None)
    else:
        os.environ["BIGQUERY_DATASET"] = previous


@pytest.fixture(params=["file", "gcs"])
def target(request, tmp_path) -> RemoteTarget:
    return remote_target(request, tmp_path, "seed-tests")


def _trigger(target: RemoteTarget, run_id: str, ids: list[str], conn: str = "gcp_test") -> Any:
    from cosmos_async_triggers.bigquery import BigQueryNodeTrigger

    nodes = [{"id": i, "kind": "hook" if "." not in i else i.split(".")[0], "name": i.rsplit(".", 1)[-1]}
             for i in ids]
    return BigQueryNodeTrigger(nodes=nodes, gcp_conn_id=conn, storage_conn_id=target.conn_id,
                               remote_target_path=target.url, project=None, location="US", poll_interval=0.05,
                               run={"dag_id": "seed_dag", "run_id": run_id, "task_id": "t", "map_index": -1})


def _schema(client: bigquery.Client, dataset: str, table: str) -> list[tuple[str, str, str]]:
    return [(f.name, f.field_type, f.mode) for f in client.get_table(f"{PROJECT}.{dataset}.{table}").schema]


def _assert_same_seed_tables(client: bigquery.Client, ours: str, oracle: str) -> None:
    for uid in SEEDS:
        table = uid.rsplit(".", 1)[-1]
        assert _schema(client, ours, table) == _schema(client, oracle, table), table
        rows = table_rows(client, ours, table)
        assert rows and rows == table_rows(client, oracle, table), table


def _run_id() -> str:
    return f"manual__{uuid.uuid4().hex[:10]}"


# ---- capture ----------------------------------------------------------------------------------------------


def test_capture_records_the_load_job_and_csv_in_order(shop) -> None:
    project, dataset, capture = shop
    for uid in SEEDS:
        node = capture.nodes[uid]
        assert node.fallback is None, node.fallback
        steps = node.steps()
        assert [type(s).__name__ for s in steps] == ["LoadCapture", "ScriptCapture"], steps  # load, then alter
        load = steps[0]
        assert isinstance(load, LoadCapture)
        config = load.configuration["load"]
        assert config["destinationTable"] == {"projectId": PROJECT, "datasetId": dataset,
                                              "tableId": uid.rsplit(".", 1)[-1]}
        assert config["writeDisposition"] == "WRITE_TRUNCATE" and str(config["skipLeadingRows"]) == "1"
        assert config["fieldDelimiter"] == ","
        # dbt-bigquery uploads the seed file itself: its bytes are the CSV in the project.
        assert load.data == (project / "seeds" / f"{uid.rsplit('.', 1)[-1]}.csv").read_bytes()
        assert "alter table" in steps[1].statements[0].lower()
        assert node.location == "US"


# ---- capture → upload → trigger ---------------------------------------------------------------------------


def test_seed_load_jobs_build_the_same_tables_as_dbt_seed(shop, target: RemoteTarget, client) -> None:
    _, dataset, capture = shop
    run_id = _run_id()
    index = upload_capture(target, "seed_dag", run_id, capture, set(SEEDS))
    assert index["version"] == 2
    fs, _ = target.filesystem()
    for uid in SEEDS:
        entry = index["nodes"][uid]
        assert "path" not in entry and [s["kind"] for s in entry["steps"]] == ["load", "query"]
        assert entry["bytes"] == sum(s["bytes"] for s in entry["steps"])  # the setup task logs the total
        load = entry["steps"][0]
        data = fs.cat_file(fs._strip_protocol(f"{target.run_prefix('seed_dag', run_id)}/{load['path']}"))
        assert load["path"].endswith(".csv") and hashlib.sha256(data).hexdigest() == load["sha256"]
        assert load["configuration"]["load"]["destinationTable"]["tableId"] == uid.rsplit(".", 1)[-1]

    client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)
    payload = payload_of(_trigger(target, run_id, ["on_run_start", *SEEDS]))
    assert payload["status"] == "success", payload
    loads = [j for j in payload["jobs"] if "output_rows" in j]
    assert [j["output_rows"] for j in loads] == [10, 25, 30]
    _assert_same_seed_tables(client, dataset, "seeds_oracle")


def test_restarted_trigger_finishes_the_seed_without_appending(shop, client, tmp_path) -> None:
    """The same trigger again (a triggerer restart): finished scripts are not re-run; the load job, which the
    emulator cannot find by its deterministic id, is loaded again with WRITE_TRUNCATE: the same table."""
    _, dataset, capture = shop
    target = RemoteTarget.from_config(f"file://{tmp_path}/remote")
    run_id = _run_id()
    upload_capture(target, "seed_dag", run_id, capture, set(SEEDS))
    assert payload_of(_trigger(target, run_id, ["on_run_start", *SEEDS]))["status"] == "success"
    again = payload_of(_trigger(target, run_id, SEEDS))
    assert again["status"] == "success", again
    _assert_same_seed_tables(client, dataset, "seeds_oracle")


def test_existing_seed_table_is_dropped_then_loaded_like_dbt(tmp_path, client, bigquery_emulator) -> None:
    """Capture over an existing seed table: dbt-bigquery deletes it through the API first (recorded as DROP);
    a changed CSV with a changed column type then builds what dbt seed builds."""
    project = _copy_project(tmp_path / "corner_shop")
    ours, oracle = "seeds_changed", "seeds_changed_oracle"
    _oracle(project, ours)  # the tables exist before the capture, as on every DAG run after the first
    seeds = project / "seeds"
    (seeds / "raw_customers.csv").write_text("customer_id,first_name,last_name,signup_date\n"
                                             "1,Ada,Archer,2024-01-01\n42,Zed,Zimmer,2025-06-30\n")
    config = project / "dbt_project.yml"
    config.write_text(config.read_text().replace("signup_date: date", "signup_date: string"))
    capture = _capture(project, ours)
    steps = capture.nodes["seed.corner_shop.raw_customers"].steps()
    assert isinstance(steps[0], ScriptCapture) and steps[0].statements[0].startswith("DROP TABLE IF EXISTS")
    assert isinstance(steps[1], LoadCapture) and isinstance(steps[2], ScriptCapture)

    target = RemoteTarget.from_config(f"file://{tmp_path}/remote")
    run_id = _run_id()
    upload_capture(target, "seed_dag", run_id, capture, set(SEEDS))
    payload = payload_of(_trigger(target, run_id, SEEDS))
    assert payload["status"] == "success", payload
    _oracle(project, oracle)
    _assert_same_seed_tables(client, ours, oracle)
    assert _schema(client, ours, "raw_customers")[3] == ("signup_date", "STRING", "NULLABLE")


def test_tampered_csv_is_refused_and_nothing_is_submitted_via_lifecycle_proxy(shop, client, proxy, tmp_path) -> None:
    capture = shop[2]
    target = RemoteTarget.from_config(f"file://{tmp_path}/remote")
    run_id = _run_id()
    index = upload_capture(target, "seed_dag", run_id, capture, set(SEEDS))
    csv = index["nodes"]["seed.corner_shop.raw_payments"]["steps"][0]["path"]
    path = Path(f"{tmp_path}/remote/seed_dag/{run_id}/{csv}")
    path.write_bytes(path.read_bytes() + b"999,1,cash,100000000\n")
    # Any upload reaching BigQuery would be answered by this fault: it must never fire.
    proxy.add_fault("*", r"^/upload/", 500, count=100)

    payload = payload_of(_trigger(target, run_id, SEEDS, conn="gcp_proxy"))
    assert payload["status"] == "failed"
    assert "the load data of seed.corner_shop.raw_payments" in payload["message"]
    assert "does not match the index" in payload["message"] and "re-run the setup task" in payload["message"]
    stats = proxy.stats()
    assert stats["inserts"] == {} and stats["faults_fired"] == {} and payload["jobs"] == []


def test_load_job_ids_follow_the_emulator(shop, client, proxy, tmp_path) -> None:
    """The trigger sends its deterministic job id; the emulator answers with an id of its own for uploads,
    and the trigger follows that job to DONE (on BigQuery the ids are the same)."""
    capture = shop[2]
    target = RemoteTarget.from_config(f"file://{tmp_path}/remote")
    run_id = _run_id()
    upload_capture(target, "seed_dag", run_id, capture, {SEEDS[0]})
    payload = payload_of(_trigger(target, run_id, ["on_run_start", SEEDS[0]], conn="gcp_proxy"))
    assert payload["status"] == "success", payload
    hook_job, load_job, alter_job = payload["jobs"]
    assert load_job["state"] == "DONE" and load_job["output_rows"] == 10
    assert alter_job["job_id"].startswith("cosmos_async_t_") and alter_job["job_id"].endswith("_1_s1_0")
    # Query jobs go through jobs.insert (the proxy counts them); the load went to the upload endpoint.
    assert sorted(proxy.stats()["inserts"]) == sorted([hook_job["job_id"], alter_job["job_id"]])


@pytest.mark.parametrize("protocol", ["multipart", "resumable_in_chunks"])
def test_recording_endpoint_takes_both_upload_protocols_of_google_cloud_bigquery(
        protocol: str, bigquery_emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """dbt-bigquery uploads with one resumable PUT today; a client that sends multipart, or a resumable upload
    in several chunks (308 between them), is recorded with the same configuration and bytes."""
    import io

    import google.cloud.bigquery.client as bq_client

    from cosmos_async.capture import recording_endpoint

    data = b"id,name\n" + b"".join(b"%d,row %d\n" % (i, i) for i in range(40000))  # ~0.5 MiB: two chunks
    schema = [bigquery.SchemaField("id", "INT64"), bigquery.SchemaField("name", "STRING")]
    config = bigquery.LoadJobConfig(skip_leading_rows=1, write_disposition="WRITE_TRUNCATE", schema=schema)
    if protocol == "resumable_in_chunks":
        monkeypatch.setattr(bq_client, "_DEFAULT_CHUNKSIZE", 256 * 1024)
    with recording_endpoint(bigquery_emulator.endpoint) as (url, recorder), answers_checked(url) as checked:
        client = bigquery.Client(project=PROJECT, credentials=AnonymousCredentials(),
                                 client_options=ClientOptions(api_endpoint=checked))
        size = len(data) if protocol == "multipart" else None  # a known small size makes the client use multipart
        job = client.load_table_from_file(io.BytesIO(data), f"{PROJECT}.nowhere.t", job_config=config, size=size)
        assert job.result().state == "DONE"
    [load] = recorder.on_run_start.loads
    assert load.data == data
    assert load.configuration["load"]["destinationTable"]["tableId"] == "t"
    assert load.configuration["load"]["schema"]["fields"][0]["name"] == "id"


def test_seed_too_big_for_one_upload_falls_back_to_local_and_uploads_no_data(
        bigquery_emulator, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import io

    from cosmos_async_triggers import layout

    from cosmos_async.capture import recording_endpoint

    monkeypatch.setattr(layout, "MAX_MULTIPART_BYTES", 1000)
    with recording_endpoint(bigquery_emulator.endpoint) as (url, recorder):
        client = bigquery.Client(project=PROJECT, credentials=AnonymousCredentials(),
                                 client_options=ClientOptions(api_endpoint=url))
        client.load_table_from_file(io.BytesIO(b"x\n" + b"1\n" * 600), f"{PROJECT}.nowhere.t").result()
    node = recorder.on_run_start
    assert "more than the 1000" in (node.fallback or "")
    capture = Capture(nodes={"seed.p.big": node}, on_run_start=NodeCapture(), on_run_end=NodeCapture())
    index = upload_capture(RemoteTarget.from_config(f"file://{tmp_path}/remote"), "d", "r", capture, {"seed.p.big"})
    assert "steps" not in index["nodes"]["seed.p.big"] and not list((tmp_path / "remote").rglob("*.csv"))
