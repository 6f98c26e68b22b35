"""Shared fixtures: real emulators on 127.0.0.1, started once per test session."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

# Airflow reads its configuration at import: give the test process its own home before anything imports it.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="cosmos-async-test-airflow-")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"


import pytest

from tests.support.api_contract import LOG as CONTRACT_LOG
from tests.support.bq_lifecycle_proxy import LifecycleProxy
from tests.support.contract_front import ContractFront
from tests.support.credentials import IamCredentialsEndpoint, TokenEndpoint
from tests.support.dbt_oracle import DBT_REQUIREMENTS
from tests.support.emulators import Emulator, start_bigquery, start_gcs
from tests.support.postgres import PostgresServer

# The metadata database of the Airflow stacks the e2e tests start: SQLite (fastest, the default) or a PostgreSQL
# server of the session's own (COSMOS_TEST_DATABASE=postgres, as .ci/run sets it) for the modules that ask for one.
DATABASES = ("sqlite", "postgres")


@contextmanager
def _fronted(emulator: Emulator) -> Iterator[Emulator]:
    """The emulator as tests see it: its endpoint is a contract-checking front (``extra['direct']`` the port
    itself), so no request reaches it unchecked against Google's discovery documents."""
    front = ContractFront(emulator.endpoint)
    try:
        yield replace(emulator, endpoint=front.url, extra={**emulator.extra, "direct": emulator.endpoint})
    finally:
        front.stop()
        emulator.stop()


@pytest.fixture(scope="session")
def bigquery_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    with _fronted(start_bigquery(tmp_path_factory.mktemp("bqemulator"))) as emulator:
        yield emulator


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    with _fronted(start_gcs(tmp_path_factory.mktemp("gcs"))) as emulator:
        yield emulator


@pytest.fixture(autouse=True)
def google_api_contract() -> Iterator[None]:
    """Fail a test during which a request broke Google's published API contract (see tests/support/api_contract)."""
    mark = len(CONTRACT_LOG.violations)
    yield
    broken = CONTRACT_LOG.since(mark)
    if broken:
        pytest.fail("requests that Google's API contract refuses:\n" + "\n".join(f"  {v}" for v in broken[:20]),
                    pytrace=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if CONTRACT_LOG.calls:
        counts = ", ".join(f"{name} {n}" for name, n in sorted(CONTRACT_LOG.calls.items()))
        terminalreporter.write_line(f"Google API contract: checked {counts}; "
                                    f"{len(CONTRACT_LOG.violations)} violation(s)")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer | None]:
    """The session's PostgreSQL server when COSMOS_TEST_DATABASE=postgres, else None."""
    choice = os.environ.get("COSMOS_TEST_DATABASE", "sqlite")
    if choice not in DATABASES:
        raise pytest.UsageError(f"COSMOS_TEST_DATABASE={choice!r}: expected one of {', '.join(DATABASES)}")
    if choice == "sqlite":
        yield None
        return
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="module")
def airflow_database_url(postgres: PostgresServer | None) -> str | None:
    """``database_url`` for a module's AirflowStack: a fresh PostgreSQL database, or None for SQLite in its home."""
    return postgres.new_database() if postgres else None


@pytest.fixture(scope="module")
def proxy(bigquery_emulator: Emulator) -> Iterator[LifecycleProxy]:
    """The BigQuery job-lifecycle proxy (RUNNING phase, 409s, cancels, injected faults), one per test module."""
    p = LifecycleProxy(bigquery_emulator.extra["direct"]).start()
    yield p
    p.stop()


@pytest.fixture(scope="session")
def token_endpoint() -> Iterator[TokenEndpoint]:
    """A local OAuth token endpoint: service-account keys made by :func:`service_account_key` sign real JWTs."""
    endpoint = TokenEndpoint()
    yield endpoint
    endpoint.stop()


@pytest.fixture(scope="session")
def iam() -> Iterator[IamCredentialsEndpoint]:
    """A local IAM Credentials endpoint (``generateAccessToken``) for impersonation, on both sides."""
    endpoint = IamCredentialsEndpoint()
    yield endpoint
    endpoint.stop()


@pytest.fixture(scope="session")
def airflow_pycache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bytecode for the Airflow processes the tests start: kept in pytest's cache between sessions when the cache
    plugin is on (a cold stack starts ~10 s slower on 2 CPUs), else a session directory."""
    cache = getattr(request.config, "cache", None)
    return Path(cache.mkdir("airflow-pycache")) if cache else tmp_path_factory.mktemp("airflow-pycache")


@pytest.fixture(scope="session")
def dbt_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv holding this environment's dbt-core and dbt-bigquery versions, built by ``ensure_venv`` under
    ``<cache>/venvs`` (the layout of ``[cosmos] cache_dir``): ~15 s cold from uv's cache, once per session."""
    from cosmos_async.dbt_venv import ensure_venv

    return ensure_venv(DBT_REQUIREMENTS, root=tmp_path_factory.mktemp("cache") / "venvs")
