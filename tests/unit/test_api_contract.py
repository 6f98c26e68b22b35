"""The contract checker itself: Google's discovery documents accept the requests the package sends and refuse
each kind of mistake with the method, path and field named."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from tests.support.api_contract import (
    ContractLog,
    check_request,
    check_response,
    check_token_request,
)
from tests.support.contract_front import ContractFront

JOBS = "/bigquery/v2/projects/demo-proj/jobs"


def _insert(**configuration: Any) -> bytes:
    job = {"jobReference": {"projectId": "demo-proj", "jobId": "cosmos_async_t_0", "location": "EU"},
           "configuration": {"labels": {"airflow_dag": "d"},
                             "query": {"query": "select 1", "useLegacySql": False}, **configuration}}
    return json.dumps(job).encode()


def _problems(method: str, target: str, body: bytes = b"", content_type: str = "application/json") -> list[str]:
    return [f"{v.where}: {v.problem}" for v in check_request(method, target, body, content_type).violations]


@pytest.mark.parametrize("method, target, api_method", [
    ("POST", JOBS, "bigquery.jobs.insert"),
    ("GET", f"{JOBS}/j_1?location=europe-west2", "bigquery.jobs.get"),
    ("POST", f"{JOBS}/j_1/cancel?location=EU", "bigquery.jobs.cancel"),
    ("GET", "/bigquery/v2/projects/demo-proj/queries/j_1?location=EU&maxResults=2", "bigquery.jobs.getQueryResults"),
    ("POST", "/upload/bigquery/v2/projects/demo-proj/jobs?uploadType=multipart", "bigquery.jobs.insert"),
    ("GET", "/storage/v1/b/bkt/o/run%2Findex.json?alt=media", "storage.objects.get"),
    ("GET", "/download/storage/v1/b/bkt/o/run%2Findex.json?alt=media", "storage.objects.get"),
    ("GET", "/storage/v1/b/bkt/o?prefix=run%2F&delimiter=%2F&maxResults=1000", "storage.objects.list"),
    ("DELETE", "/storage/v1/b/bkt/o/run%2Findex.json", "storage.objects.delete"),
    ("POST", "/upload/storage/v1/b/bkt/o?uploadType=media&name=a", "storage.objects.insert"),
    ("POST", "/v1/projects/-/serviceAccounts/sa@p.iam.gserviceaccount.com:generateAccessToken",
     "iamcredentials.projects.serviceAccounts.generateAccessToken"),
])
def test_each_request_kind_maps_to_its_discovery_method(method: str, target: str, api_method: str) -> None:
    assert check_request(method, target).method_id == api_method


def test_a_well_formed_job_insert_passes() -> None:
    assert _problems("POST", JOBS, _insert()) == []


@pytest.mark.parametrize("body, expected", [
    (_insert(query={"query": "select 1", "priority": "LOW"}), "configuration.query.priority: 'LOW' is not one of"),
    (_insert(query={"query": "select 1", "useLegacySQL": False}), "useLegacySQL: not a field of JobConfigurationQuery"),
    (_insert(query={"query": "select 1", "useLegacySql": "false"}), "useLegacySql: expected a boolean"),
    (_insert(query={"query": "x" * (1024 * 1024 + 1)}), "query: 1048577 characters, more than 1048576"),
    (_insert(labels={"Team": "x"}), "labels.Team: label key is not"),
    (_insert(labels={"1team": "x"}), "labels.1team: label key is not"),
    (_insert(labels={"team": "Data Eng"}), "labels.team: label value 'Data Eng'"),
    (_insert(labels={f"k{i}": "v" for i in range(65)}), "configuration.labels: 65 labels, more than 64"),
    (_insert(jobTimeoutMs=600000), ""),  # an int64 as a JSON number: accepted
    (_insert(jobTimeoutMs="ten minutes"), "jobTimeoutMs: expected an int64"),
    (json.dumps({"jobReference": {"jobId": "a/b"}}).encode(), "jobReference.jobId: 'a/b' is not 1-1,024"),
    (json.dumps({"jobReference": {"jobId": "j" * 1025}}).encode(), "jobReference.jobId"),
    (json.dumps({"configuration": {"load": {"sourceFormat": "TSV"}}}).encode(), "sourceFormat: 'TSV' is not one of"),
])
def test_each_broken_rule_names_its_field(body: bytes, expected: str) -> None:
    problems = _problems("POST", JOBS, body)
    assert (any(expected in p for p in problems) if expected else problems == []), problems


def test_paths_and_parameters_outside_discovery_are_refused() -> None:
    assert _problems("GET", f"{JOBS}/j_1?region=EU") == ["query region: not a parameter of this method"]
    assert _problems("GET", "/bigquery/v2/projects/p/jobz/j") [0].startswith("path: no method")
    assert _problems("POST", f"{JOBS}/j_1") [0].startswith("path: no method")  # jobs.get is GET
    assert _problems("GET", "/download/storage/v1/b/bkt/o/x") == ["query alt: the download path serves media only "
                                                                  "(alt=media)"]
    assert _problems("POST", "/upload/bigquery/v2/projects/p/jobs?uploadType=chunky", b"x")[0].startswith(
        "query uploadType")
    assert _problems("POST", "/v1/projects/p/serviceAccounts:generateAccessToken", b"{}")  # name pattern


def test_multipart_upload_metadata_and_batch_parts_are_checked() -> None:
    boundary = "b1"
    metadata = json.dumps({"configuration": {"load": {"writeDisposition": "WRITE_OVER"}}})
    body = (f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{metadata}\r\n--{boundary}\r\n"
            f"Content-Type: application/octet-stream\r\n\r\na,b\r\n--{boundary}--\r\n").encode()
    problems = _problems("POST", "/upload/bigquery/v2/projects/p/jobs?uploadType=multipart", body,
                         f'multipart/related; boundary="{boundary}"')
    assert any("writeDisposition: 'WRITE_OVER'" in p for p in problems), problems
    batch = (b"--x\r\nContent-Type: application/http\r\n\r\nDELETE /storage/v1/b/bkt/o/a?bogus=1 HTTP/1.1\r\n\r\n"
             b"\r\n--x--\r\n")
    assert _problems("POST", "/batch/storage/v1", batch, "multipart/mixed; boundary=x") == [
        "query bogus: not a parameter of this method"]


def test_answers_are_checked_against_the_response_schema() -> None:
    job = {"kind": "bigquery#job", "jobReference": {"projectId": "p", "jobId": "j"}, "status": {"state": "DONE"}}
    assert check_response("POST", JOBS, 200, json.dumps(job).encode()) == []
    bad = {**job, "status": {"state": "DONE", "errorResult": "boom"}, "rowCount": 1}
    wrong = {f"{v.where}: {v.problem}" for v in check_response("POST", JOBS, 200, json.dumps(bad).encode())}
    assert wrong == {"answer.status.errorResult: expected a ErrorProto object, got str",
                     "answer.rowCount: not a field of Job"}


def test_token_requests_are_checked_by_hand() -> None:
    form = "application/x-www-form-urlencoded"
    jwt = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": "h.c.s"}
    assert check_token_request("POST", form, jwt) == []
    assert check_token_request("POST", form, {"grant_type": "refresh_token", "refresh_token": "r",
                                              "client_id": "c", "client_secret": "s"}) == []
    assert [v.where for v in check_token_request("POST", "application/json", {**jwt, "assertion": "x"})] == [
        "Content-Type", "assertion"]
    assert [v.where for v in check_token_request("GET", form, {"grant_type": "password"})] == [
        "method", "grant_type"]


def test_the_front_records_what_it_forwards_and_streams_the_answer() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Upstream(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    log = ContractLog()
    front = ContractFront(f"http://127.0.0.1:{server.server_address[1]}", log=log)
    try:
        request = urllib.request.Request(f"{front.url}{JOBS}", data=_insert(labels={"Bad Key": "v"}),
                                         headers={"Content-Type": "application/json"}, method="POST")
        assert urllib.request.urlopen(request, timeout=10).read() == b"{}"
    finally:
        front.stop()
        server.shutdown()
    assert log.calls["bigquery.jobs.insert"] == 1
    assert [str(v) for v in log.violations] == [
        "POST /bigquery/v2/projects/demo-proj/jobs (bigquery.jobs.insert): body.configuration.labels.Bad Key: "
        "label key is not 1-63 lowercase letters, digits, _ or -, starting with a letter"]


def test_requests_since_a_mark_survive_the_log_dropping_old_ones() -> None:
    log = ContractLog()
    for i in range(5003):
        log.record(check_request("GET", f"{JOBS}/j_{i}"))
    mark = log.recorded
    log.record(check_request("POST", f"{JOBS}/j_x/cancel?location=EU"))
    assert [c.query() for c in log.requests_since(mark)] == [{"location": "EU"}]
    assert log.requests_since(log.recorded) == []
