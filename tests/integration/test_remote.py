"""The remote target path on file:// and on the GCS emulator: layout, index, and teardown's reach."""

from __future__ import annotations

import hashlib
import json

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
