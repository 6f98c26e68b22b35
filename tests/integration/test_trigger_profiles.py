"""BigQueryNodeTrigger authenticated from the user's profiles.yml, one test per dbt-bigquery method.

Real parts: the BigQuery emulator behind the job-lifecycle proxy (which records every request's Authorization
header, so each test asserts which bearer token BigQuery saw), the local OAuth token endpoint (service-account
JWTs and refresh-token grants), a local IAM Credentials endpoint for impersonation, google-auth. The trigger's
kwargs name the profiles.yml target only; the tests also check they hold no secret.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cosmos_async_triggers import auth, rest
from cosmos_async_triggers.bigquery import BigQueryNodeTrigger

from cosmos_async import DbtDag, ExecutionConfig, ExecutionMode, ProfileConfig, ProjectConfig
from cosmos_async.capture import Capture, NodeCapture
from cosmos_async.errors import ConfigurationError
from cosmos_async.remote import RemoteTarget, upload_capture
from tests.support.bq_lifecycle_proxy import LifecycleProxy
from tests.support.credentials import TokenEndpoint, secret_fragments, service_account_key

PROJECT = "demo-proj"
CORNER_SHOP = Path(__file__).resolve().parents[2] / "dev" / "dags" / "dbt" / "corner_shop"
TARGET_SA = "dbt-target@demo-proj.iam.gserviceaccount.com"
CLIENT_SECRET = "GOCSPX-local-client-secret-9f8e7d"
REFRESH_TOKEN = "1//local-refresh-token-abcdef123456"


@pytest.fixture(scope="module")
def key(token_endpoint: TokenEndpoint) -> dict[str, str]:
    return service_account_key(token_endpoint.url)


@pytest.fixture(autouse=True)
def fresh_caches(proxy: LifecycleProxy) -> Iterator[None]:
    proxy.reset()
    auth.forget_tokens()
    yield
    auth.forget_tokens()


@pytest.fixture
def file_target(tmp_path: Path) -> RemoteTarget:
    return RemoteTarget.from_config(f"file://{tmp_path}/remote")


def write_profile(tmp_path: Path, target: dict[str, Any]) -> dict[str, str]:
    """profiles.yml with ``target`` as profile 'shop', target 'dev'; the trigger kwargs that name it."""
    path = tmp_path / "profiles.yml"
    path.write_text(yaml.safe_dump({"shop": {"target": "dev", "outputs": {"dev": {
        "type": "bigquery", "project": PROJECT, "dataset": "profile_ds", "location": "US", **target}}}}))
    return {"profiles_yml": str(path), "profile": "shop", "target": "dev"}


def node_trigger(target: RemoteTarget, dbt_target: dict[str, str], *, task_id: str = "t") -> BigQueryNodeTrigger:
    """A trigger of one node whose script (``select 1``) is uploaded for a new run."""
    run_id = f"manual__{uuid.uuid4().hex[:10]}"
    capture = Capture(nodes={"model.p.m": NodeCapture(["select 1 as x"])}, on_run_start=NodeCapture(),
                      on_run_end=NodeCapture())
    upload_capture(target, "dag", run_id, capture, {"model.p.m"})
    return BigQueryNodeTrigger(nodes=[{"id": "model.p.m", "kind": "model", "name": "m"}], gcp_conn_id=None,
                               dbt_target=dbt_target, storage_conn_id=None, remote_target_path=target.url,
                               project=None, location=None, poll_interval=0.05,
                               run={"dag_id": "dag", "run_id": run_id, "task_id": task_id, "map_index": -1})


def run_triggers(*triggers: BigQueryNodeTrigger) -> list[dict[str, Any]]:
    """Each trigger's single event payload, run concurrently on one fresh loop (as in a triggerer)."""
    async def collect(trigger: BigQueryNodeTrigger) -> list[Any]:
        return [event async for event in trigger.run()]

    async def main() -> list[dict[str, Any]]:
        try:
            events = await asyncio.gather(*(collect(t) for t in triggers))
        finally:
            await rest.close_session()
        assert all(len(e) == 1 for e in events), events
        return [e[0].payload for e in events]

    return asyncio.run(main())


def assert_kwargs_hold_no_secret(trigger: BigQueryNodeTrigger, secrets: list[str]) -> None:
    text = json.dumps(trigger.serialize())
    assert "profiles.yml" in text  # the reference is there ...
    leaked = [s[:12] for s in secrets if s in text]
    assert not leaked, f"secrets in the serialized trigger kwargs: {leaked}"  # ... and nothing else


def bigquery_saw(proxy: LifecycleProxy) -> set[str]:
    assert proxy.authorizations, "no request reached BigQuery"
    return set(proxy.authorizations)


# ---- one test per method ----------------------------------------------------------------------------------


def test_service_account_keyfile(tmp_path, file_target, proxy, key, token_endpoint) -> None:
    keyfile = tmp_path / "key.json"
    keyfile.write_text(json.dumps(key))
    trigger = node_trigger(file_target, write_profile(tmp_path, {
        "method": "service-account", "keyfile": str(keyfile), "api_endpoint": proxy.url}))
    before = len(token_endpoint.tokens())

    (payload,) = run_triggers(trigger)

    assert payload["status"] == "success", payload
    (issued,) = token_endpoint.tokens()[before:]
    assert bigquery_saw(proxy) == {f"Bearer {issued}"}
    assert_kwargs_hold_no_secret(trigger, [*secret_fragments(key), issued])


@pytest.mark.parametrize("encoding", ["as_native", "base64"])
def test_service_account_json_from_env_var(tmp_path, file_target, proxy, key, token_endpoint, monkeypatch,
                                           encoding: str) -> None:
    """The key reaches the triggerer through its own environment; 1000 triggers sign one JWT."""
    if encoding == "as_native":
        monkeypatch.setenv("SHOP_KEYFILE_JSON", json.dumps(key))
        keyfile_json = "{{ env_var('SHOP_KEYFILE_JSON') | as_native }}"
    else:
        monkeypatch.setenv("SHOP_KEYFILE_JSON", base64.b64encode(json.dumps(key).encode()).decode())
        keyfile_json = "{{ env_var('SHOP_KEYFILE_JSON') }}"
    ref = write_profile(tmp_path, {"method": "service-account-json", "keyfile_json": keyfile_json,
                                   "api_endpoint": proxy.url})
    triggers = [node_trigger(file_target, ref, task_id=f"t{i}") for i in range(20)]
    before = len(token_endpoint.tokens())

    payloads = run_triggers(*triggers)

    assert [p["status"] for p in payloads] == ["success"] * 20, payloads[0]
    (issued,) = token_endpoint.tokens()[before:]  # one grant for every trigger: the cache is per process
    assert bigquery_saw(proxy) == {f"Bearer {issued}"}
    assert_kwargs_hold_no_secret(triggers[0], [*secret_fragments(key), issued])


def test_oauth_secrets_refresh_token(tmp_path, file_target, proxy, token_endpoint) -> None:
    trigger = node_trigger(file_target, write_profile(tmp_path, {
        "method": "oauth-secrets", "refresh_token": REFRESH_TOKEN, "client_id": "local-client.apps",
        "client_secret": CLIENT_SECRET, "token_uri": token_endpoint.url, "api_endpoint": proxy.url}))
    before = len(token_endpoint.tokens())

    (payload,) = run_triggers(trigger)

    assert payload["status"] == "success", payload
    (issued,) = token_endpoint.tokens()[before:]
    grant = token_endpoint.grants_seen[-1]
    assert (grant["grant_type"], grant["refresh_token"], grant["client_secret"]) == (
        "refresh_token", REFRESH_TOKEN, CLIENT_SECRET)
    assert bigquery_saw(proxy) == {f"Bearer {issued}"}
    assert_kwargs_hold_no_secret(trigger, [REFRESH_TOKEN, CLIENT_SECRET, issued])


def test_oauth_secrets_static_token_as_on_the_emulator(tmp_path, file_target, proxy, token_endpoint) -> None:
    """The example project's own profiles.yml case: a token, no refresh (the token endpoint is not asked)."""
    trigger = node_trigger(file_target, write_profile(tmp_path, {
        "method": "oauth-secrets", "token": "{{ env_var('SHOP_TOKEN', 'static-token-77') }}",
        "api_endpoint": proxy.url}))
    grants = len(token_endpoint.grants_seen)

    (payload,) = run_triggers(trigger)

    assert payload["status"] == "success", payload
    assert bigquery_saw(proxy) == {"Bearer static-token-77"}
    assert len(token_endpoint.grants_seen) == grants
    assert_kwargs_hold_no_secret(trigger, ["static-token-77"])


def test_oauth_application_default_credentials(tmp_path, file_target, proxy, key, token_endpoint,
                                               monkeypatch) -> None:
    adc = tmp_path / "adc.json"
    adc.write_text(json.dumps(key))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    trigger = node_trigger(file_target, write_profile(tmp_path, {"method": "oauth", "api_endpoint": proxy.url}))
    before = len(token_endpoint.tokens())

    (payload,) = run_triggers(trigger)

    assert payload["status"] == "success", payload
    (issued,) = token_endpoint.tokens()[before:]
    assert bigquery_saw(proxy) == {f"Bearer {issued}"}


def test_impersonation_on_top_of_a_key(tmp_path, file_target, proxy, key, token_endpoint, iam,
                                       monkeypatch) -> None:
    """The key's token goes to IAM Credentials only; BigQuery sees the delegated token of the target account;
    concurrent triggers share one generateAccessToken call."""
    monkeypatch.setenv("AIRFLOW__COSMOS__IAM_CREDENTIALS_ENDPOINT", iam.url)
    monkeypatch.setenv("SHOP_KEYFILE_JSON", json.dumps(key))
    ref = write_profile(tmp_path, {"method": "service-account-json",
                                   "keyfile_json": "{{ env_var('SHOP_KEYFILE_JSON') | as_native }}",
                                   "impersonate_service_account": TARGET_SA, "api_endpoint": proxy.url})
    triggers = [node_trigger(file_target, ref, task_id=f"t{i}") for i in range(5)]
    before, calls = len(token_endpoint.tokens()), len(iam.calls)

    payloads = run_triggers(*triggers)

    assert [p["status"] for p in payloads] == ["success"] * 5, payloads[0]
    (source_token,) = token_endpoint.tokens()[before:]
    (call,) = iam.calls[calls:]
    assert call["account"] == TARGET_SA and call["method"] == "generateAccessToken"
    assert call["authorization"] == f"Bearer {source_token}"
    assert "https://www.googleapis.com/auth/bigquery" in call["scope"]
    assert bigquery_saw(proxy) == {f"Bearer {iam.issued[-1]}"}
    assert_kwargs_hold_no_secret(triggers[0], [*secret_fragments(key), source_token, iam.issued[-1]])


# ---- what the triggerer cannot use ------------------------------------------------------------------------


def test_env_var_missing_in_the_triggerer_fails_the_task_naming_it(tmp_path, file_target, proxy,
                                                                   monkeypatch) -> None:
    monkeypatch.delenv("SHOP_KEYFILE_JSON", raising=False)
    trigger = node_trigger(file_target, write_profile(tmp_path, {
        "method": "service-account-json", "keyfile_json": "{{ env_var('SHOP_KEYFILE_JSON') | as_native }}",
        "api_endpoint": proxy.url}))

    (payload,) = run_triggers(trigger)

    assert payload["status"] == "failed"
    message = payload["message"]
    assert "env_var('SHOP_KEYFILE_JSON'), which is not set in the triggerer's environment" in message, message
    assert "set SHOP_KEYFILE_JSON there" in message and "profile 'shop', target 'dev'" in message
    assert proxy.authorizations == [], "nothing may reach BigQuery without credentials"


def test_gs_remote_path_without_bucket_connection_names_it(tmp_path, proxy) -> None:
    ref = write_profile(tmp_path, {"method": "oauth-secrets", "token": "t", "api_endpoint": proxy.url})
    trigger = BigQueryNodeTrigger(nodes=[{"id": "model.p.m", "kind": "model", "name": "m"}], gcp_conn_id=None,
                                  dbt_target=ref, storage_conn_id=None, remote_target_path="gs://bucket/runs",
                                  project=None, location=None, run={"dag_id": "d", "run_id": "r", "task_id": "t"})
    (payload,) = run_triggers(trigger)
    assert payload["status"] == "failed"
    assert "needs a google_cloud_platform connection for the bucket, also with a profiles.yml" in payload["message"]


BAD_TARGETS = [
    ({"type": "postgres", "method": "oauth"}, "has type 'postgres'", "point ProfileConfig at a bigquery target"),
    ({"method": "external-oauth-wif"}, "has method 'external-oauth-wif'", "use one of service-account"),
    ({"method": "service-account"}, "method service-account needs keyfile", "add it to the target"),
    ({"method": "service-account-json"}, "method service-account-json needs keyfile_json", "add it"),
    ({"method": "oauth-secrets", "refresh_token": "r", "client_id": "c"},
     "with a refresh_token also needs client_secret, token_uri", "add them to the target"),
]


@pytest.mark.parametrize("target, cause, fix", BAD_TARGETS, ids=["type", "method", "keyfile", "keyfile_json",
                                                                  "refresh"])
def test_bad_target_fails_at_dag_parse(tmp_path, monkeypatch, target, cause, fix) -> None:
    path = write_profile(tmp_path, target)["profiles_yml"]
    monkeypatch.setenv("AIRFLOW__COSMOS__REMOTE_TARGET_PATH", f"file://{tmp_path}/remote")
    with pytest.raises(ConfigurationError) as info:
        DbtDag(dag_id="bad_target", schedule=None,
               project_config=ProjectConfig(dbt_project_path=CORNER_SHOP,
                                            manifest_path=CORNER_SHOP / "manifest.json"),
               profile_config=ProfileConfig(profile_name="shop", target_name="dev", profiles_yml_filepath=path),
               execution_config=ExecutionConfig(execution_mode=ExecutionMode.AIRFLOW_ASYNC))
    message = str(info.value)
    assert cause in message and fix in message, message
    assert f"{path} (profile 'shop', target 'dev')" in message, message


def test_missing_target_and_env_var_only_known_to_the_triggerer_at_parse(tmp_path, monkeypatch) -> None:
    """A missing target fails the parse; a method behind an env var the DAG processor lacks does not."""
    from cosmos_async.render import async_settings

    path = write_profile(tmp_path, {"method": "{{ env_var('ONLY_IN_TRIGGERER') }}"})["profiles_yml"]
    monkeypatch.delenv("ONLY_IN_TRIGGERER", raising=False)
    settings = async_settings(ProfileConfig(profile_name="shop", target_name="dev", profiles_yml_filepath=path),
                              {})
    assert settings["dbt_target"] == {"profiles_yml": path, "profile": "shop", "target": "dev"}
    assert settings["gcp_conn_id"] is None
    with pytest.raises(ConfigurationError, match="has no profile 'shop' with target 'prod'"):
        async_settings(ProfileConfig(profile_name="shop", target_name="prod", profiles_yml_filepath=path), {})
