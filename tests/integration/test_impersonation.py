"""A ``google_cloud_platform`` connection whose ``impersonation_chain`` names the account to act as.

Real parts: the BigQuery emulator behind the job-lifecycle proxy (it records every request's Authorization
header), the GCS emulator behind a contract front of this module's own (it records the same), the local OAuth
token endpoint that signs the connection's service-account key, the local IAM Credentials endpoint
(``generateAccessToken``; with ``refuse`` it answers 403 as Google does), real dbt and gcsfs. Every assertion
about who made a request compares the bearer token it carried with the tokens each endpoint issued: the source
key's tokens may reach IAM Credentials only; BigQuery and GCS must see delegated tokens.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cosmos_async_triggers import auth
from cosmos_async_triggers.bigquery import BigQueryNodeTrigger
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from cosmos_async import DbtDag, ExecutionConfig, ExecutionMode, ProfileConfig, ProjectConfig
from cosmos_async.capture import Capture, NodeCapture
from cosmos_async.errors import ConfigurationError
from cosmos_async.impersonation import ImpersonationError
from cosmos_async.profiles import GoogleCloudServiceAccountDictProfileMapping, run_target
from cosmos_async.remote import RemoteTarget, delete_run, upload_capture
from tests.integration.test_stale_sql import DAG_ID, _dag_run
from tests.integration.test_trigger import model, new_run, payload_of
from tests.support.bq_lifecycle_proxy import LifecycleProxy
from tests.support.contract_front import ContractFront
from tests.support.credentials import IamCredentialsEndpoint, TokenEndpoint, secret_fragments, service_account_key
from tests.support.dbt_oracle import EXAMPLE_PROJECT, built_tables, dbt_build

PROJECT = "demo-proj"
TARGET_SA = "dbt-target@demo-proj.iam.gserviceaccount.com"
HOP_SA = "dbt-hop@demo-proj.iam.gserviceaccount.com"
ROLE = "roles/iam.serviceAccountTokenCreator"


@pytest.fixture(scope="module")
def gcs_front(gcs_emulator) -> Iterator[ContractFront]:
    """The GCS emulator behind a front recording each request's Authorization header."""
    front = ContractFront(gcs_emulator.extra["direct"])
    yield front
    front.stop()


@pytest.fixture(scope="module")
def key(token_endpoint: TokenEndpoint) -> dict[str, str]:
    return service_account_key(token_endpoint.url)


@pytest.fixture(scope="module", autouse=True)
def connections(key, proxy: LifecycleProxy, gcs_front: ContractFront, iam: IamCredentialsEndpoint) -> Iterator[None]:
    """``gcp_imp`` acts as TARGET_SA (a string, as the provider's form stores it); ``gcp_chain`` acts as TARGET_SA
    through HOP_SA (a list)."""
    def conn(chain: Any) -> str:
        return json.dumps({"conn_type": "google_cloud_platform", "extra": {
            "project": PROJECT, "keyfile_dict": json.dumps(key), "impersonation_chain": chain,
            "bigquery_api_endpoint": proxy.url, "storage_api_endpoint": gcs_front.url}})

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_CONN_GCP_IMP", conn(TARGET_SA))
        mp.setenv("AIRFLOW_CONN_GCP_CHAIN", conn([HOP_SA, TARGET_SA]))
        mp.setenv("AIRFLOW__COSMOS__IAM_CREDENTIALS_ENDPOINT", iam.url)
        yield


@pytest.fixture(autouse=True)
def fresh(proxy: LifecycleProxy, iam: IamCredentialsEndpoint) -> Iterator[None]:
    proxy.reset()
    proxy.set_hold(0.0)
    auth.forget_tokens()
    iam.refuse = False
    yield
    iam.refuse = False
    auth.forget_tokens()


def delegated(iam: IamCredentialsEndpoint) -> set[str]:
    return {f"Bearer {t}" for t in iam.issued}


def one_node_capture() -> Capture:
    return Capture({"model.p.m": NodeCapture(["select 1 as x"])}, NodeCapture(), NodeCapture())


# ---- the whole path: setup's dbt and uploads, the triggers' reads and jobs, teardown --------------------------


def test_connection_impersonation_reaches_dbt_jobs_storage_and_tables_equal_dbt_build(
        tmp_path: Path, bigquery_emulator, proxy: LifecycleProxy, gcs_front: ContractFront, gcs_emulator,
        iam: IamCredentialsEndpoint, token_endpoint: TokenEndpoint, key, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    ours = tmp_path / "ours"
    shutil.copytree(EXAMPLE_PROJECT, ours, ignore=shutil.ignore_patterns("target", "target-*", "logs"))
    monkeypatch.setenv("BIGQUERY_API_ENDPOINT", bigquery_emulator.endpoint)
    calls, seen, grants = len(iam.calls), len(gcs_front.seen), len(token_endpoint.tokens())
    mapping = GoogleCloudServiceAccountDictProfileMapping(conn_id="gcp_imp", profile_args={"dataset": "imp_ds"})
    remote = f"gs://{gcs_emulator.extra['bucket']}/impersonation"
    dag = DbtDag(dag_id=DAG_ID, schedule=None, project_config=ProjectConfig(dbt_project_path=ours),
                 profile_config=ProfileConfig(profile_name="corner_shop", target_name="dev", profile_mapping=mapping),
                 execution_config=ExecutionConfig(execution_mode=ExecutionMode.AIRFLOW_ASYNC),
                 operator_args={"poll_interval": 0.05, "remote_target_path": remote,
                                "remote_target_path_conn_id": "gcp_imp"})
    _dag_run(dag, "manual__impersonation")

    source_tokens = {f"Bearer {t}" for t in token_endpoint.tokens()[grants:]}
    assert source_tokens, "the connection's key was never used"
    new_calls = iam.calls[calls:]
    # Setup's dbt and gcsfs, teardown's gcsfs and the triggers each asked IAM; the triggers share one token.
    assert len(new_calls) >= 3 and {c["account"] for c in new_calls} == {TARGET_SA}
    assert {c["authorization"] for c in new_calls} <= source_tokens
    assert proxy.inserts, "no job reached BigQuery"
    assert set(proxy.authorizations) <= delegated(iam), "BigQuery saw a token that is not the delegated one"
    storage = gcs_front.seen[seen:]
    kinds = {(m, "alt=media" in p) for m, p, _ in storage}
    assert {("POST", False), ("GET", True)} <= kinds, kinds  # setup's uploads and the triggers' reads
    assert any(m == "DELETE" or "batch" in p for m, p, _ in storage), "teardown deleted nothing"
    assert {a for _, _, a in storage} <= delegated(iam), "GCS saw a token that is not the delegated one"

    printed = caplog.text + "".join(capfd.readouterr())
    secrets = [*secret_fragments(key), *(t.split()[1] for t in source_tokens), *iam.issued]
    assert not [s[:14] for s in secrets if s in printed], "a secret reached the logs"
    kwargs = json.dumps([t.trigger_kwargs(end_task=False, run={}) for t in dag.dbt_tasks.values()
                         if hasattr(t, "trigger_kwargs")])
    assert not [s[:14] for s in secrets if s in kwargs]

    client = bigquery.Client(project=PROJECT, credentials=AnonymousCredentials(),
                             client_options=ClientOptions(api_endpoint=bigquery_emulator.endpoint))
    monkeypatch.setenv("BIGQUERY_DATASET", "oracle_imp")
    dbt_build(ours)
    expected = built_tables(client, "oracle_imp")
    assert expected and built_tables(client, "imp_ds") == expected


# ---- the storage side on its own, with a chain ---------------------------------------------------------------


def test_setup_uploads_and_teardown_deletes_act_through_the_chain(
        gcs_emulator, gcs_front: ContractFront, iam: IamCredentialsEndpoint, token_endpoint: TokenEndpoint) -> None:
    target = RemoteTarget.from_config(f"gs://{gcs_emulator.extra['bucket']}/chain-{uuid.uuid4().hex[:6]}",
                                      "gcp_chain")
    run_id = new_run()
    calls, seen, grants = len(iam.calls), len(gcs_front.seen), len(token_endpoint.tokens())

    upload_capture(target, "dag", run_id, one_node_capture(), {"model.p.m"})
    assert delete_run(target, "dag", run_id) == 4  # the node, both hooks and the index

    new_calls = iam.calls[calls:]
    assert len(new_calls) == 2  # one filesystem opened by setup, one by teardown
    assert all(c["account"] == TARGET_SA and c["delegates"] == [f"projects/-/serviceAccounts/{HOP_SA}"]
               for c in new_calls), new_calls
    assert {c["authorization"] for c in new_calls} <= {f"Bearer {t}" for t in token_endpoint.tokens()[grants:]}
    storage = gcs_front.seen[seen:]
    assert {m for m, _, _ in storage} >= {"POST", "GET"} and storage
    assert {a for _, _, a in storage} <= delegated(iam), storage


def test_trigger_acts_through_the_chain(tmp_path: Path, proxy: LifecycleProxy, iam: IamCredentialsEndpoint) -> None:
    target = RemoteTarget.from_config(f"file://{tmp_path}/remote")
    run_id = new_run()
    upload_capture(target, "dag", run_id, one_node_capture(), {"model.p.m"})
    calls = len(iam.calls)

    payload = payload_of(_trigger(target, run_id, "gcp_chain"))

    assert payload["status"] == "success", payload
    (call,) = iam.calls[calls:]
    assert call["account"] == TARGET_SA and call["delegates"] == [f"projects/-/serviceAccounts/{HOP_SA}"]
    assert set(proxy.authorizations) == {f"Bearer {iam.issued[-1]}"}


def test_a_chain_fails_for_dbt_at_setup_naming_the_connection_and_the_fix(tmp_path: Path) -> None:
    mapping = GoogleCloudServiceAccountDictProfileMapping(conn_id="gcp_chain", profile_args={"dataset": "d"})
    with pytest.raises(ConfigurationError) as info:
        run_target(ProfileConfig("p", "dev", profile_mapping=mapping))
    message = str(info.value)
    assert "connection 'gcp_chain'" in message and "dbt acts as a single account" in message, message
    assert f"set impersonation_chain to {TARGET_SA} alone" in message and ROLE in message, message


def _trigger(target: RemoteTarget, run_id: str, conn: str) -> BigQueryNodeTrigger:
    return BigQueryNodeTrigger(
        nodes=model(), gcp_conn_id=conn, storage_conn_id=None, remote_target_path=target.url, project=None,
        location="US", poll_interval=0.05,
        run={"dag_id": "dag", "run_id": run_id, "task_id": "t", "map_index": -1})


# ---- refused ---------------------------------------------------------------------------------------------------


def _assert_refusal(message: str, iam: IamCredentialsEndpoint) -> None:
    assert f"connection 'gcp_imp': cannot impersonate {TARGET_SA}" in message, message
    assert f"HTTP 403 PERMISSION_DENIED: {iam.REFUSAL} Grant {ROLE} (the credentials need it on {TARGET_SA})" \
        in message, message
    assert "ya29." not in message  # neither the source token nor any delegated one


def test_refused_impersonation_fails_with_one_message_on_every_side(
        tmp_path: Path, gcs_emulator, proxy: LifecycleProxy, iam: IamCredentialsEndpoint) -> None:
    iam.refuse = True
    file_target = RemoteTarget.from_config(f"file://{tmp_path}/remote")
    run_id = new_run()
    upload_capture(file_target, "dag", run_id, one_node_capture(), {"model.p.m"})

    payload = payload_of(_trigger(file_target, run_id, "gcp_imp"))  # the trigger
    assert payload["status"] == "failed"
    _assert_refusal(payload["message"], iam)
    assert proxy.authorizations == [], "nothing may reach BigQuery without the delegated token"

    gs_target = RemoteTarget.from_config(f"gs://{gcs_emulator.extra['bucket']}/refused", "gcp_imp")
    with pytest.raises(ImpersonationError) as storage:  # setup's and teardown's storage I/O
        upload_capture(gs_target, "dag", run_id, one_node_capture(), {"model.p.m"})
    _assert_refusal(str(storage.value), iam)

    mapping = GoogleCloudServiceAccountDictProfileMapping(conn_id="gcp_imp", profile_args={"dataset": "d"})
    with pytest.raises(ImpersonationError) as dbt:  # setup's dbt
        run_target(ProfileConfig("p", "dev", profile_mapping=mapping))
    _assert_refusal(str(dbt.value), iam)
