"""No secret in what the setup task leaves behind: the files it uploads, its return value (its XCom), its logs,
the dbt project, and the text and traceback of the exceptions it raises when credentials or SQL fail.

The setup runs for real: ``DbtAsyncSetupOperator.execute`` captures a dbt project through a
``google_cloud_platform`` connection holding a freshly generated service-account key (dbt signs JWTs with it and
exchanges them for access tokens at the local token endpoint), reads the BigQuery emulator, and uploads to
file://. A DAG run's teardown deletes these files, so the end-to-end scan cannot read them: this one does.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from airflow.models.dagrun import DagRun

from bench.synthetic import write_project
from cosmos_async.config import ProfileConfig
from cosmos_async.dbt.capture_cli import build_request
from cosmos_async.operators.setup import DbtAsyncSetupOperator
from cosmos_async.profiles import GoogleCloudServiceAccountDictProfileMapping
from tests.support.credentials import TokenEndpoint, secret_fragments, service_account_key

DAG_ID = "secrets_scan"
DATASET = "secrets_scan"
MODELS = ["model.synthetic.model_00000", "model.synthetic.model_00001", "model.synthetic.model_00002"]
# A credentialed read BigQuery rejects: dbt runs it during the capture (run_query), so its error text — what a
# user sees when SQL fails — reaches the node's fallback reason, the uploaded index and the setup's log.
BAD_QUERY = ("{% if execute %}{% do run_query('select no_such_column from `demo-proj`.no_such_dataset.t') %}"
             "{% endif %}\nselect 1 as id\n")


def _connect(monkeypatch: pytest.MonkeyPatch, conn_id: str, key: Mapping[str, str], bigquery: str) -> str:
    """An Airflow connection (env var) holding ``key``; its token_uri is the key's (a local token endpoint)."""
    conn = json.dumps({"conn_type": "google_cloud_platform",
                       "extra": {"project": "demo-proj", "keyfile_dict": json.dumps(key),
                                 "bigquery_api_endpoint": bigquery}})
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", conn)
    return conn


def _profile(conn_id: str, **profile_args: Any) -> ProfileConfig:
    mapping = GoogleCloudServiceAccountDictProfileMapping(conn_id=conn_id,
                                                          profile_args={"dataset": DATASET, **profile_args})
    return ProfileConfig(profile_name="synthetic", target_name="dev", profile_mapping=mapping)


def _setup(project: Path, profile: ProfileConfig, remote: Path, node_ids: list[str]) -> DbtAsyncSetupOperator:
    # use_venv=False: capture in this process, as a setup task does where dbt is installed.
    return DbtAsyncSetupOperator(task_id="dbt_setup_async", project_dir=project, profile_config=profile,
                                 node_ids=node_ids, remote_target_path=f"file://{remote}",
                                 remote_target_path_conn_id=None, use_venv=False)


def _context(run_id: str) -> dict[str, Any]:
    """The part of the task context the setup reads: the DAG run and its id."""
    return {"dag_run": DagRun(dag_id=DAG_ID, run_id=run_id), "run_id": run_id}


def _leaks(texts: Mapping[str, str], key: Mapping[str, str], tokens: list[str]) -> list[tuple[str, str]]:
    """(where, which secret) for every secret fragment or access token found; short prefixes keep the message
    itself from printing a secret."""
    return [(where, secret[:12]) for where, text in texts.items() for secret in [*secret_fragments(key), *tokens]
            if secret in text]


def _tree(root: Path, label: str) -> dict[str, str]:
    return {f"{label} {p.relative_to(root)}": p.read_bytes().decode(errors="replace")
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def key(token_endpoint: TokenEndpoint) -> dict[str, str]:
    return service_account_key(token_endpoint.url)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    # Seed (a CSV upload), view, table and incremental models: each opens its own credentialed connection. No
    # data tests: they add dbt time, not another kind of file or request.
    root = write_project(tmp_path / "synthetic", 3, seed=3, tests_per_model=0)
    (root / "models" / "bad_query.sql").write_text(BAD_QUERY)
    return root


@pytest.fixture
def captured_output(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Iterator[Any]:
    """A function returning what was logged so far: log records, and dbt's and Airflow's lines on stdout/stderr
    (file-descriptor level, so output of any library or thread counts)."""
    caplog.set_level(logging.DEBUG)

    def read() -> dict[str, str]:
        out, err = capfd.readouterr()
        return {"log records": caplog.text, "stdout": out, "stderr": err}

    yield read


def test_setup_leaves_no_secret_in_uploaded_files_return_value_logs_or_project(
        project: Path, key, token_endpoint: TokenEndpoint, bigquery_emulator, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, captured_output) -> None:
    connection = _connect(monkeypatch, "secrets_scan", key, bigquery_emulator.endpoint)
    # The scan must recognise the key in the form the connection stores it, or finding nothing means nothing.
    assert _leaks({"connection": connection}, key, [])
    remote = tmp_path / "remote"
    before = len(token_endpoint.tokens())
    setup = _setup(project, _profile("secrets_scan"), remote,
                   ["seed.synthetic.source_rows", *MODELS, "model.synthetic.bad_query"])

    returned = setup.execute(_context("manual__secrets"))

    issued = token_endpoint.tokens()[before:]
    assert issued, "dbt never exchanged the key for an access token: the scan would prove nothing"
    uploaded = _tree(remote, "uploaded")
    # Index, scripts, and the seed's CSV: every kind of file a setup uploads is scanned.
    assert {Path(name).suffix for name in uploaded} == {".json", ".sql", ".csv"}, sorted(uploaded)
    index = json.loads(next(text for name, text in uploaded.items() if name.endswith("index.json")))
    fallback = index["nodes"]["model.synthetic.bad_query"]["fallback"]
    assert "no_such_dataset" in fallback, fallback  # BigQuery's error text did reach the uploaded index
    output = captured_output()
    assert "model.synthetic.bad_query will run through dbt" in output["stdout"] + output["stderr"], output
    texts = {**uploaded, "return value (XCom)": json.dumps(returned), **output, **_tree(project, "project")}
    leaked = _leaks(texts, key, token_endpoint.tokens())
    assert not leaked, f"secrets left by the setup: {leaked}"


@pytest.fixture
def refusing_endpoint() -> Iterator[TokenEndpoint]:
    endpoint = TokenEndpoint(refuse=True)
    yield endpoint
    endpoint.stop()


@pytest.mark.parametrize("failure", ["token endpoint refuses the key", "dbt rejects the profile"])
def test_setup_failures_show_no_secret_in_exception_traceback_or_logs(
        failure: str, project: Path, key, token_endpoint: TokenEndpoint, refusing_endpoint: TokenEndpoint,
        bigquery_emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, captured_output) -> None:
    if failure == "token endpoint refuses the key":
        # A key Google no longer accepts (revoked, rotated): dbt loads it, signs with it, and is refused.
        used_key, profile_args, expected = service_account_key(refusing_endpoint.url), {}, "invalid_grant"
    else:
        # dbt validates the rendered credentials, private key included, and quotes what it rejects.
        used_key, profile_args, expected = key, {"priority": "urgent"}, "Credentials in profile"
    _connect(monkeypatch, "secrets_failure", used_key, bigquery_emulator.endpoint)
    setup = _setup(project, _profile("secrets_failure", **profile_args), tmp_path / "remote", MODELS)

    with pytest.raises(Exception) as raised:
        setup.execute(_context("manual__failure"))

    assert expected in str(raised.value), str(raised.value)
    if used_key is not key:
        assert refusing_endpoint.refusals, "the refused key was never presented to the token endpoint"
    texts = {"str(exception)": str(raised.value), "repr(exception)": repr(raised.value),
             "traceback": "".join(traceback.format_exception(raised.value)), **captured_output()}
    leaked = _leaks(texts, used_key, token_endpoint.tokens())
    assert not leaked, f"secrets in a failed setup's exception or output: {leaked}"
    assert not (tmp_path / "remote").exists(), "a failed capture must not upload anything"


def test_virtualenv_request_file_holds_no_secret(project: Path, key, bigquery_emulator,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """With dbt in a virtualenv the setup writes the capture request to a file: secrets go in the child's
    environment only."""
    _connect(monkeypatch, "secrets_venv", key, bigquery_emulator.endpoint)
    request, child_env = build_request(project, _profile("secrets_venv"))
    assert _leaks({"child environment": json.dumps(child_env)}, key, []), "the key must reach the child somehow"
    leaked = _leaks({"request file": json.dumps(request)}, key, [])
    assert not leaked, f"secrets in the request file: {leaked}"
