"""Airflow connections (as AIRFLOW_CONN_* env vars) pointing the triggers at the emulators."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from cosmos_async_triggers import auth


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
