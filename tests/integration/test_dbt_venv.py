"""dbt in a virtualenv built from async_py_requirements: a real uv/pip build, a real capture in it.

The venv is built once per session (uv's cache makes that seconds); the captures use the BigQuery emulator.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import pytest

from bench.synthetic import write_project
from cosmos_async.config import ProfileConfig
from cosmos_async.dbt.capture import capture_project
from cosmos_async.dbt.capture_cli import capture_in_python, decode, encode
from cosmos_async.dbt.captured import Capture
from cosmos_async.dbt.venv import VenvBuildError, ensure_venv, venv_key, venv_python
from cosmos_async.errors import ConfigurationError, CosmosAsyncError
from tests.support.dbt_oracle import DBT_REQUIREMENTS

REQUIREMENTS = DBT_REQUIREMENTS
FAKE_TOKEN = "ya29.fake-secret-token-3f9c2e71"
log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def venv_root(dbt_venv: Path) -> Path:
    # Laid out like [cosmos] cache_dir/venvs, so the operator finds the same venv through the setting.
    return dbt_venv.parent


@pytest.fixture(scope="module")
def venv(dbt_venv: Path) -> Path:
    info = json.loads((dbt_venv / "cosmos-async-venv.json").read_text())
    print(f"\nensure_venv build: {info['build_s']:.1f}s ({info['tool']})")
    return dbt_venv


@pytest.fixture
def project(tmp_path: Path, bigquery_emulator, monkeypatch: pytest.MonkeyPatch, request) -> Path:
    monkeypatch.setenv("BIGQUERY_API_ENDPOINT", bigquery_emulator.endpoint)
    monkeypatch.setenv("BIGQUERY_DATASET", f"venv_{request.node.name[:40]}")
    # The emulator takes any bearer token: this stands for a real secret that must never reach a file.
    monkeypatch.setenv("BIGQUERY_TOKEN", FAKE_TOKEN)
    return write_project(tmp_path / "synthetic", 4, seed=1)


def _profile(project: Path) -> ProfileConfig:
    return ProfileConfig(profile_name="synthetic", target_name="dev", profiles_yml_filepath=project / "profiles.yml")


def test_second_call_reuses_the_venv(venv: Path, venv_root: Path) -> None:
    marker = venv / "cosmos-async-venv.json"
    before = marker.stat().st_mtime_ns
    started = time.monotonic()
    again = ensure_venv(list(reversed(REQUIREMENTS)), root=venv_root)  # order does not change the key
    cached = time.monotonic() - started
    print(f"\nensure_venv cached: {cached * 1000:.1f}ms")
    assert again == venv and marker.stat().st_mtime_ns == before
    assert cached < 1.0


def _per_invocation_labels_dropped(capture: Capture) -> Capture:
    """The capture without dbt's ``dbt_invocation_id`` job label, which two dbt invocations never share."""
    def clean(node):
        configs = [None if c is None else {**c, "labels": {k: v for k, v in (c.get("labels") or {}).items()
                                                          if k != "dbt_invocation_id"}} for c in node.configurations]
        loads = [dataclasses.replace(x, configuration={**x.configuration, "labels": {
            k: v for k, v in (x.configuration.get("labels") or {}).items() if k != "dbt_invocation_id"}})
            for x in node.loads]
        return dataclasses.replace(node, configurations=configs, loads=loads)
    return Capture({k: clean(v) for k, v in capture.nodes.items()}, clean(capture.on_run_start),
                   clean(capture.on_run_end))


def test_capture_in_venv_equals_in_process_and_keeps_secrets_off_disk(venv: Path, project: Path,
                                                                        tmp_path: Path) -> None:
    workdir = tmp_path / "exchange"
    started = time.monotonic()
    theirs = capture_in_python(venv_python(venv), project, _profile(project), workdir=workdir)
    in_venv = time.monotonic() - started
    started = time.monotonic()
    ours = capture_project(project, _profile(project))
    in_process = time.monotonic() - started
    print(f"\ncapture in venv {in_venv:.1f}s, in process {in_process:.1f}s")

    assert isinstance(theirs, Capture)
    assert sorted(theirs.nodes) == sorted(ours.nodes)
    assert len([uid for uid in ours.nodes if uid.startswith("model.")]) == 4
    assert _per_invocation_labels_dropped(theirs) == _per_invocation_labels_dropped(ours)  # every field of every node

    request, result = (workdir / "request.json").read_text(), (workdir / "result.json").read_text()
    assert FAKE_TOKEN not in request and FAKE_TOKEN not in result
    assert "env_var('COSMOS_ASYNC_SECRET_TOKEN')" in json.loads(request)["target"]["token"]


def test_child_errors_come_back_with_their_message(venv: Path, project: Path) -> None:
    # The child's CosmosAsyncError comes back as the same class, with the child's message.
    with pytest.raises(CosmosAsyncError, match=r"no dbt_project\.yml in .*missing"):
        capture_in_python(venv_python(venv), project / "missing", _profile(project))


def test_bad_requirement_is_one_clear_error(venv_root: Path) -> None:
    bad = "dbt-bigquery==0.0.0-nope"
    with pytest.raises(VenvBuildError) as caught:
        ensure_venv([bad], root=venv_root)
    message = str(caught.value)
    assert bad in message and "last lines" in message
    assert not (venv_root / f"dbt-{venv_key([bad])}").exists(), "a failed build must not stay behind"


def test_empty_requirements_are_a_configuration_error(venv_root: Path) -> None:
    with pytest.raises(ConfigurationError, match="async_py_requirements"):
        ensure_venv([], root=venv_root)


def test_setup_operator_without_dbt_and_without_requirements_says_what_to_set(project: Path) -> None:
    from cosmos_async.operators.setup import DbtAsyncSetupOperator

    setup = DbtAsyncSetupOperator(task_id="setup", project_dir=project, profile_config=_profile(project),
                                  node_ids=[], remote_target_path="gs://b/p", remote_target_path_conn_id=None,
                                  use_venv=True)
    with pytest.raises(ConfigurationError, match=r"ExecutionConfig\(async_py_requirements="):
        setup._capture(setup._resolved_target())


def test_setup_operator_captures_in_the_venv(venv: Path, venv_root: Path, project: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from cosmos_async.operators.setup import DbtAsyncSetupOperator

    # [cosmos] cache_dir/venvs is where the operator looks: point it at the venv built above.
    monkeypatch.setenv("AIRFLOW__COSMOS__CACHE_DIR", str(venv_root.parent))
    setup = DbtAsyncSetupOperator(task_id="setup", project_dir=project, profile_config=_profile(project),
                                  node_ids=[], remote_target_path="gs://b/p", remote_target_path_conn_id=None,
                                  py_requirements=REQUIREMENTS, use_venv=True, select=["model_00000+"])
    capture = setup._capture(setup._resolved_target())
    assert "model.synthetic.model_00000" in capture.nodes
    assert "seed.synthetic.source_rows" not in capture.nodes


def test_encode_decode_round_trip_and_unserializable_field() -> None:
    from dataclasses import dataclass

    from cosmos_async.dbt.captured import CaptureError, NodeCapture

    capture = Capture({"model.p.a": NodeCapture(["select 1"], None, "US")}, NodeCapture(), NodeCapture())
    assert decode(Capture, json.loads(json.dumps(encode(capture)))) == capture

    @dataclass
    class Load:  # the shape of a seed's load step: JSON config plus raw bytes
        configuration: dict[str, object]
        data: bytes
        after: int | None = None

    load = Load({"load": {"sourceFormat": "CSV"}}, b"id,name\n1,\xc3\xa9\n")
    assert decode(Load, json.loads(json.dumps(encode(load)))) == load

    @dataclass
    class Odd:
        when: object

    with pytest.raises(CaptureError, match=r"capture\.when is a object, which is not JSON-serializable"):
        encode(Odd(object()))


def test_setup_operator_captures_with_the_python_of_dbt_executable_path(venv: Path, project: Path) -> None:
    """ExecutionConfig(dbt_executable_path=<venv>/bin/dbt): the capture runs in that dbt's interpreter."""
    from cosmos_async.operators.setup import DbtAsyncSetupOperator

    setup = DbtAsyncSetupOperator(task_id="setup", project_dir=project, profile_config=_profile(project),
                                  node_ids=[], remote_target_path="gs://b/p", remote_target_path_conn_id=None,
                                  dbt_executable_path=venv / "bin" / "dbt")
    assert setup._python() == venv_python(venv)
    assert _per_invocation_labels_dropped(setup._capture(setup._resolved_target())) == \
        _per_invocation_labels_dropped(capture_project(project, _profile(project)))
