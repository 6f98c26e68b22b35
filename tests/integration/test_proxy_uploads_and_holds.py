"""The lifecycle proxy in front of the emulator: dbt's seed path (a resumable upload) goes through it, and a job
is held for the duration its ``hold_for`` gives it, with submit and DONE times in the timeline."""

import io
import json
import time
import urllib.request
import uuid

from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from tests.support.bq_lifecycle_proxy import LifecycleProxy

PROJECT = "demo-proj"


def _client(url: str) -> bigquery.Client:
    return bigquery.Client(project=PROJECT, credentials=AnonymousCredentials(),
                           client_options=ClientOptions(api_endpoint=url))


def test_a_resumable_load_goes_through_the_proxy(proxy: LifecycleProxy) -> None:
    client = _client(proxy.url)
    client.create_dataset("proxy_uploads", exists_ok=True)
    config = bigquery.LoadJobConfig(source_format=bigquery.SourceFormat.CSV, skip_leading_rows=1,
                                    schema=[bigquery.SchemaField("id", "INT64")])
    job = client.load_table_from_file(io.BytesIO(b"id\n1\n2\n3\n"), f"{PROJECT}.proxy_uploads.rows",
                                      job_config=config, rewind=True)
    job.result(timeout=30)
    rows = _client(proxy.upstream).query("select count(*) as n from proxy_uploads.rows").result()
    assert next(iter(rows)).n == 3


def _run_query(base: str, sql: str) -> None:
    """jobs.insert, then getQueryResults until complete, as plain REST calls (Google's client adds a `projection`
    to jobs.get that its discovery document does not list, which the contract check would flag)."""
    job_id = f"held_{uuid.uuid4().hex}"
    body = {"jobReference": {"projectId": PROJECT, "jobId": job_id},
            "configuration": {"query": {"query": sql, "useLegacySql": False}}}
    urllib.request.urlopen(urllib.request.Request(f"{base}/bigquery/v2/projects/{PROJECT}/jobs",
                                                  data=json.dumps(body).encode(), method="POST",
                                                  headers={"Content-Type": "application/json"}), timeout=30).read()
    for _ in range(30):
        with urllib.request.urlopen(f"{base}/bigquery/v2/projects/{PROJECT}/queries/{job_id}?timeoutMs=10000",
                                    timeout=30) as resp:
            if json.loads(resp.read()).get("jobComplete"):
                return
    raise AssertionError(f"{job_id} never completed")


def test_a_job_is_held_for_its_own_duration(bigquery_emulator) -> None:
    held = LifecycleProxy(bigquery_emulator.extra["direct"],
                          hold_for=lambda c: ("slow" if "slow" in str(c) else None,
                                              1.5 if "slow" in str(c) else 0.0)).start()
    try:
        t0 = time.monotonic()
        _run_query(held.url, "select 'fast' as x")
        fast = time.monotonic() - t0
        _run_query(held.url, "select 'slow' as x")
        slow = time.monotonic() - t0 - fast
        timeline = {j["name"]: j for j in held.job_log()}
    finally:
        held.stop()
    assert slow >= 1.5 > fast
    assert timeline["slow"]["done"] - timeline["slow"]["submitted"] >= 1.5
    assert timeline[None]["hold"] == 0.0
