"""BigQuery's error reasons, each answered both ways BigQuery reports them, judged as its documentation says.

Fault injection (named as such): the lifecycle proxy (tests/support/bq_lifecycle_proxy.py) in front of the BigQuery
emulator answers a reason as an HTTP error on jobs.insert or jobs.get, or lets the job run and reports it DONE
with that reason in ``status.errorResult``. A transient reason is retried (HTTP: the same job id after a backoff;
a failed job: a new job, as the profile's ``job_retries`` allow); a permanent one fails the task at once with
BigQuery's message and nothing sent again.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from cosmos_async.dbt.captured import Capture, NodeCapture
from cosmos_async.remote import RemoteTarget, upload_capture
from tests.integration.test_trigger import make, model, new_run, payload_of
from tests.support.bq_lifecycle_proxy import LifecycleProxy

PROJECT = "demo-proj"
INSERT = r"^/bigquery/v2/projects/[^/]+/jobs$"
GET = r"^/bigquery/v2/projects/[^/]+/jobs/cosmos_async_[^/]+$"
CALLS = {"insert": ("POST", INSERT), "get": ("GET", GET)}  # the call a fault answers: (HTTP method, path)
QUOTA_MESSAGE = "Quota exceeded: Your project exceeded quota for free query bytes scanned."
# reason -> (HTTP status BigQuery answers it with, BigQuery's message)
TRANSIENT = {
    "backendError": (503, "Backend error. Job aborted."),
    "internalError": (500, "An internal error occurred and the request could not be completed."),
    "rateLimitExceeded": (403, "Exceeded rate limits: too many api requests per user per method."),
    "jobRateLimitExceeded": (403, "Exceeded rate limits: too many table update operations for this table."),
}
PERMANENT = {
    "invalidQuery": (400, "Syntax error: Unexpected identifier \"selec\" at [1:1]"),
    "accessDenied": (403, "Access Denied: Project demo-proj: User does not have bigquery.jobs.create permission."),
    "notFound": (404, "Not found: Dataset demo-proj:nowhere was not found in location US"),
    "quotaExceeded": (403, QUOTA_MESSAGE),
    "bytesBilledLimitExceeded": (400, "Query exceeded limit for bytes billed: 1000000. 10485760 or higher "
                                      "required."),
    "responseTooLarge": (403, "Response too large to return. Consider specifying a destination table."),
}


pytestmark = pytest.mark.usefixtures("emulator_conns", "clean_proxy")


def _run(tmp_path: Any, settings: dict[str, str] | None = None) -> dict[str, Any]:
    target = RemoteTarget.from_config(f"file://{tmp_path}/remote-{uuid.uuid4().hex[:6]}")
    run_id = new_run()
    capture = Capture({"model.p.m": NodeCapture(["select 1 as x"])}, NodeCapture(), NodeCapture())
    upload_capture(target, "dag", run_id, capture, {"model.p.m"}, target_settings=settings)
    return payload_of(make(target, run_id, model(), conn="gcp_proxy"))


def _run_with_http_error(tmp_path: Any, proxy: LifecycleProxy, call: str, reason: str,
                         count: int) -> tuple[int, str, dict[str, Any]]:
    """Fault injection: the next ``count`` ``call`` requests answer ``reason`` as BigQuery's HTTP error; then one
    node's trigger runs. (HTTP status, BigQuery's message, the trigger's payload)."""
    status, message = {**TRANSIENT, **PERMANENT}[reason]
    method, path = CALLS[call]
    proxy.add_fault(method, path, status, count=count, reason=reason, message=message)
    return status, message, _run(tmp_path)


@pytest.mark.parametrize("call", ["insert", "get"])
@pytest.mark.parametrize("reason", sorted(TRANSIENT))
def test_transient_http_error_is_retried_with_the_same_job_id_fault_injected(
        reason: str, call: str, tmp_path, proxy: LifecycleProxy) -> None:
    status, _, payload = _run_with_http_error(tmp_path, proxy, call, reason, count=2)
    assert payload["status"] == "success", payload
    assert proxy.faults_fired == {str(status): 2}
    assert list(proxy.inserts.values()) == [1] and payload["jobs"][0]["job_id"].endswith("_0_0")


@pytest.mark.parametrize("call", ["insert", "get"])
@pytest.mark.parametrize("reason", sorted(PERMANENT))
def test_permanent_http_error_fails_at_once_with_bigquerys_message_fault_injected(
        reason: str, call: str, tmp_path, proxy: LifecycleProxy) -> None:
    status, message, payload = _run_with_http_error(tmp_path, proxy, call, reason, count=5)
    if call == "get" and reason == "notFound":
        # jobs.get's 404 is BigQuery saying "no such job yet": the trigger submits it, as it must.
        assert payload["status"] == "success" and list(proxy.inserts.values()) == [1], payload
        return
    assert payload["status"] == "failed", payload
    assert f"HTTP {status} {reason}: {message}" in payload["message"]
    assert proxy.faults_fired == {str(status): 1}  # not sent again
    assert proxy.inserts == {}
    if reason == "quotaExceeded":
        assert payload["message"].startswith("BigQuery quota exceeded (not retried")
        assert "free query bytes scanned" in payload["message"]  # which quota: BigQuery's own words


@pytest.mark.parametrize("reason", sorted(TRANSIENT))
def test_job_failed_for_a_transient_reason_runs_again_as_a_new_job_fault_injected(
        reason: str, tmp_path, proxy: LifecycleProxy) -> None:
    proxy.add_fault("POST", INSERT, "job_error", count=1, reason=reason, message=TRANSIENT[reason][1])
    payload = _run(tmp_path)  # no job_retries in the profile: dbt-bigquery's default, one retry
    assert payload["status"] == "success", payload
    assert payload["jobs"][0]["job_id"].endswith("_0_1")
    assert sorted(j[-4:] for j in proxy.inserts) == ["_0_0", "_0_1"]


@pytest.mark.parametrize("reason", sorted(PERMANENT))
def test_job_failed_for_a_permanent_reason_fails_at_once_fault_injected(
        reason: str, tmp_path, proxy: LifecycleProxy) -> None:
    message = PERMANENT[reason][1]
    proxy.add_fault("POST", INSERT, "job_error", count=5, reason=reason, message=message)
    payload = _run(tmp_path, {"job_retries": "3"})
    assert payload["status"] == "failed", payload
    assert list(proxy.inserts) == [payload["jobs"][0]["job_id"]]  # one job, never submitted again
    assert message in payload["message"] and f"reason: {reason}" in payload["message"]
    if reason == "quotaExceeded":
        assert "BigQuery quota exceeded (not retried" in payload["message"] and QUOTA_MESSAGE in payload["message"]
    if reason == "bytesBilledLimitExceeded":
        assert "maximum_bytes_billed" in payload["message"]


def test_job_retries_bound_the_new_jobs_fault_injected(tmp_path, proxy: LifecycleProxy) -> None:
    proxy.add_fault("POST", INSERT, "job_error", count=10, reason="backendError", message="Backend error.")
    payload = _run(tmp_path, {"job_retries": "2"})
    assert payload["status"] == "failed" and "Backend error." in payload["message"], payload
    assert sorted(j[-4:] for j in proxy.inserts) == ["_0_0", "_0_1", "_0_2"]  # the first try and two retries

    proxy.reset()
    proxy.add_fault("POST", INSERT, "job_error", count=10, reason="backendError", message="Backend error.")
    assert _run(tmp_path, {"job_retries": "0"})["status"] == "failed"
    assert len(proxy.inserts) == 1


def test_job_retry_deadline_stops_retrying_fault_injected(tmp_path, proxy: LifecycleProxy) -> None:
    proxy.add_fault("POST", INSERT, "job_error", count=10, reason="internalError", message="Internal error.")
    started = time.monotonic()
    # Each retry waits at least half a second: a 0.2 s deadline leaves no room for one.
    payload = _run(tmp_path, {"job_retries": "5", "job_retry_deadline_seconds": "0.2"})
    assert payload["status"] == "failed" and len(proxy.inserts) == 1, payload
    assert time.monotonic() - started < 5


def test_profile_mappings_job_retries_reach_the_trigger_through_the_index_fault_injected(
        tmp_path, proxy: LifecycleProxy) -> None:
    """A profile mapping's profile_args set job_retries: setup records it (and no other target field) in the index."""
    from cosmos_async import GoogleCloudOauthProfileMapping, ProfileConfig
    from cosmos_async.operators.setup import DbtAsyncSetupOperator

    mapping = GoogleCloudOauthProfileMapping(conn_id="gcp_proxy", profile_args={"dataset": "ds", "job_retries": 2})
    setup = DbtAsyncSetupOperator(task_id="setup", project_dir=tmp_path, node_ids=["model.p.m"],
                                  profile_config=ProfileConfig("p", "dev", profile_mapping=mapping),
                                  remote_target_path=f"file://{tmp_path}", remote_target_path_conn_id=None)
    settings = setup._target_settings(setup._resolved_target())
    assert settings == {"job_retries": "2"}
    proxy.add_fault("POST", INSERT, "job_error", count=10, reason="jobRateLimitExceeded", message="Exceeded.")
    assert _run(tmp_path, settings)["status"] == "failed"
    assert len(proxy.inserts) == 3
