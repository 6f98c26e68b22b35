"""The remote target path on file:// and on the GCS emulator: layout, index, and teardown's reach."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from cosmos_async_triggers.layout import segment

from cosmos_async.dbt.captured import Capture, NodeCapture
from cosmos_async.remote import RemoteStorageError, RemoteTarget, delete_run, read_index, upload_capture

HOSTILE = ["../../etc/passwd", "a/b", "..", ".", "~x", "run id with spaces", "manual__2026-11-25T00:00:00+00:00"]


def _capture() -> Capture:
    return Capture(
        nodes={"model.p.a": NodeCapture(["create or replace table d.a as select 1 as x"], location="US"),
               "model.p.b": NodeCapture(["select 1"], fallback="python model")},
        on_run_start=NodeCapture(["create schema if not exists `p`.`d`"]),
        on_run_end=NodeCapture(),
    )


@pytest.fixture(params=["file", "gcs"])
def target(request, tmp_path, monkeypatch) -> RemoteTarget:
    if request.param == "file":
        return RemoteTarget.from_config(f"file://{tmp_path}/remote")
    gcs = request.getfixturevalue("gcs_emulator")
    monkeypatch.setenv("AIRFLOW_CONN_GCS_EMU", json.dumps({
        "conn_type": "google_cloud_platform",
        "extra": {"project": "demo-proj", "anonymous": True, "storage_api_endpoint": gcs.endpoint}}))
    return RemoteTarget.from_config(f"gs://{gcs.extra['bucket']}/runs-{request.node.name[-12:-1]}", "gcs_emu")


def test_upload_writes_index_with_sha256_then_teardown_removes_only_its_run(target: RemoteTarget) -> None:
    fs, _ = target.filesystem()
    upload_capture(target, "dag", "run_1", _capture(), {"model.p.a", "model.p.b"})
    upload_capture(target, "dag", "run_2", _capture(), {"model.p.a"})
    index = read_index(target, "dag", "run_1")
    entry = index["nodes"]["model.p.a"]
    data = fs.cat_file(fs._strip_protocol(f"{target.run_prefix('dag', 'run_1')}/{entry['path']}"))
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert data.decode().startswith("create or replace table d.a")
    assert index["nodes"]["model.p.b"]["fallback"] == "python model"
    assert "on_run_start" in index["nodes"]

    assert delete_run(target, "dag", "run_1") == 5  # 4 scripts + the index
    with pytest.raises(RemoteStorageError, match="setup task has not run"):
        read_index(target, "dag", "run_1")
    assert read_index(target, "dag", "run_2")["run_id"] == "run_2"  # the other run is untouched


def test_segments_are_distinct_for_distinct_names() -> None:
    names = [*HOSTILE, "a_b", "a~2Fb", "a%2Fb"]
    assert len({segment(n) for n in names}) == len(names)


def test_task_groups_of_one_run_keep_their_own_files(target: RemoteTarget) -> None:
    """Two DbtTaskGroups of one DAG run (and a DbtDag's own files beside them) never read or delete each other's."""
    for group in ("snapshots", "models", "nodes", None):  # "nodes" must not collide with a DbtDag's nodes/
        upload_capture(target, "dag", "run", _capture(), {"model.p.a"}, group)
    prefixes = {target.run_prefix("dag", "run", g) for g in ("snapshots", "models", "nodes", None)}
    assert len(prefixes) == 4
    assert read_index(target, "dag", "run", "models")["group_id"] == "models"

    assert delete_run(target, "dag", "run", "snapshots") == 4  # 3 scripts + its index
    with pytest.raises(RemoteStorageError, match="setup task has not run"):
        read_index(target, "dag", "run", "snapshots")
    assert delete_run(target, "dag", "run") == 4  # the DbtDag's files only: the groups' directories stay
    assert read_index(target, "dag", "run", "models")["group_id"] == "models"
    assert read_index(target, "dag", "run", "nodes")["group_id"] == "nodes"
    assert delete_run(target, "dag", "run", "models") == 4
    assert delete_run(target, "dag", "run", "nodes") == 4
    fs, _ = target.filesystem()
    assert not fs.exists(fs._strip_protocol(target.run_prefix("dag", "run"))) or not fs.find(
        fs._strip_protocol(target.run_prefix("dag", "run")))


def _stored(target: RemoteTarget, prefix: str) -> dict[str, str]:
    """sha256 of every object under the run prefix, read back from the storage."""
    fs, _ = target.filesystem()
    fs.invalidate_cache()
    root = fs._strip_protocol(prefix)
    return {path[len(root) + 1:]: hashlib.sha256(fs.cat_file(path)).hexdigest() for path in fs.find(root)}


def test_files_go_up_while_dbt_runs_and_the_index_only_after_all(target: RemoteTarget, tmp_path, bigquery_emulator,
                                                                  monkeypatch) -> None:
    from bench.synthetic import write_project
    from cosmos_async.config import ProfileConfig
    from cosmos_async.dbt.capture import capture_project
    from cosmos_async.remote import RunUpload

    monkeypatch.setenv("BIGQUERY_API_ENDPOINT", bigquery_emulator.endpoint)
    monkeypatch.setenv("BIGQUERY_DATASET", "overlap")
    project = write_project(tmp_path / "synthetic", 8, seed=5)
    profile = ProfileConfig(profile_name="synthetic", target_name="dev", profiles_yml_filepath=project / "profiles.yml")
    prefix = target.run_prefix("dag", "overlap")
    finished: list[str] = []
    during: list[dict[str, str]] = []  # what the storage held while dbt was still running

    def on_node(unique_id: str, node: NodeCapture) -> None:
        finished.append(unique_id)
        upload.node_captured(unique_id, node)
        if len(finished) == 4:  # dbt waits for this callback: give the first node's upload time on a busy machine
            first = f"nodes/{segment(finished[0])}"
            deadline = time.monotonic() + 15
            held = _stored(target, prefix)
            while not any(path.startswith(first) for path in held) and time.monotonic() < deadline:
                time.sleep(0.1)
                held = _stored(target, prefix)
            during.append(held)

    # As the DAG's render hands them to the setup task (its tests' ids carry hashes: left out here).
    wanted = {f"model.synthetic.model_{i:05d}" for i in range(8)} | {"seed.synthetic.source_rows"}
    with RunUpload(target, "dag", "overlap", wanted) as upload:
        capture = capture_project(project, profile, on_node_captured=on_node)
        index = upload.finish(capture)

    (held,) = during
    assert any(path.startswith(f"nodes/{segment(finished[0])}") for path in held), \
        "the first node's files are up while dbt still captures the others"
    assert "index.json" not in held, "no index while the capture runs"
    assert len(finished) > 4, "the check above ran before the capture's end"
    files = _stored(target, prefix)
    assert files.pop("index.json")
    promised = {item["path"]: item["sha256"] for e in index["nodes"].values() for item in e.get("steps", [e])}
    assert files == promised, "every file the index names is up with the bytes it promises, and nothing else"
    sequential = upload_capture(target, "dag", "sequential", capture, wanted)
    assert sequential["nodes"] == index["nodes"], "the same entries as an upload after the capture"


def test_node_changed_after_its_early_upload_goes_up_again_with_its_final_bytes(target: RemoteTarget) -> None:
    from cosmos_async.remote import RunUpload

    capture = _capture()
    with RunUpload(target, "dag", "changed", {"model.p.a", "model.p.b"}) as upload:
        upload.node_captured("model.p.a", NodeCapture(["select 'first pass' as x"]))
        index = upload.finish(capture)  # model.p.a as a later capture pass left it

    files = _stored(target, target.run_prefix("dag", "changed"))
    entry = index["nodes"]["model.p.a"]
    assert files[entry["path"]] == entry["sha256"] == hashlib.sha256(capture.nodes["model.p.a"].script().encode()
                                                                     ).hexdigest()
