"""Airflow connections (as AIRFLOW_CONN_* env vars) pointing the triggers at the emulators."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cosmos_async_triggers import auth

from cosmos_async.remote import RemoteTarget


@contextmanager
def emulator_connections(project: str, bigquery: str, proxy: str, storage: str) -> Iterator[pytest.MonkeyPatch]:
    """``gcp_test`` (BigQuery emulator), ``gcp_proxy`` (through the lifecycle proxy), ``gcs_test`` (storage)."""
    def conn(**extra: Any) -> str:
        return json.dumps({"conn_type": "google_cloud_platform",
                           "extra": {"project": project, "anonymous": True, **extra}})

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_CONN_GCP_TEST", conn(bigquery_api_endpoint=bigquery))
        mp.setenv("AIRFLOW_CONN_GCP_PROXY", conn(bigquery_api_endpoint=proxy))
        mp.setenv("AIRFLOW_CONN_GCS_TEST", conn(storage_api_endpoint=storage))
        auth.forget_tokens()  # the trigger keeps connections for a minute per process
        yield mp
    auth.forget_tokens()


def remote_target(request: pytest.FixtureRequest, tmp_path: Path, prefix: str) -> RemoteTarget:
    """The remote target of a ``params=["file", "gcs"]`` fixture: a temp dir, or ``prefix`` in the GCS emulator's
    bucket through the ``gcs_test`` connection."""
    if request.param == "file":
        return RemoteTarget.from_config(f"file://{tmp_path}/remote")
    bucket = request.getfixturevalue("gcs_emulator").extra["bucket"]
    return RemoteTarget.from_config(f"gs://{bucket}/{prefix}", "gcs_test")
