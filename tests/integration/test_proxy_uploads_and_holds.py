"""The lifecycle proxy in front of the emulator: dbt's seed path (a resumable upload) goes through it, and a job
is held for the duration its ``hold_for`` gives it, with submit and DONE times in the timeline."""

import io
import time

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


def test_a_job_is_held_for_its_own_duration(bigquery_emulator) -> None:
    held = LifecycleProxy(bigquery_emulator.endpoint, hold_for=lambda c: ("slow" if "slow" in str(c) else None,
                                                                        1.5 if "slow" in str(c) else 0.0)).start()
    try:
        client = _client(held.url)
        t0 = time.monotonic()
        client.query("select 'fast' as x").result(timeout=30)
        fast = time.monotonic() - t0
        client.query("select 'slow' as x").result(timeout=30)
        slow = time.monotonic() - t0 - fast
        timeline = {j["name"]: j for j in held.job_log()}
    finally:
        held.stop()
    assert slow >= 1.5 > fast
    assert timeline["slow"]["done"] - timeline["slow"]["submitted"] >= 1.5
    assert timeline[None]["hold"] == 0.0
