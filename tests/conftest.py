"""Shared fixtures: real emulators on 127.0.0.1, started once per test session."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

# Airflow reads its configuration at import: give the test process its own home before anything imports it.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="cosmos-async-test-airflow-")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"

import pytest

from tests.support.credentials import TokenEndpoint
from tests.support.emulators import Emulator, start_bigquery, start_gcs


@pytest.fixture(scope="session")
def bigquery_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emulator = start_bigquery(tmp_path_factory.mktemp("bqemulator"))
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emulator = start_gcs(tmp_path_factory.mktemp("gcs"))
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def token_endpoint() -> Iterator[TokenEndpoint]:
    """A local OAuth token endpoint: service-account keys made by :func:`service_account_key` sign real JWTs."""
    endpoint = TokenEndpoint()
    yield endpoint
    endpoint.stop()
