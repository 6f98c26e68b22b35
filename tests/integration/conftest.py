"""Fixtures shared by the integration modules that run triggers against the emulators through the lifecycle proxy.

Not autouse: a module asks for them with ``pytestmark = pytest.mark.usefixtures("emulator_conns", "clean_proxy")``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.bq_lifecycle_proxy import LifecycleProxy
from tests.support.connections import emulator_connections

PROJECT = "demo-proj"


@pytest.fixture(scope="module")
def emulator_conns(bigquery_emulator, gcs_emulator, proxy: LifecycleProxy) -> Iterator[None]:
    """The ``gcp_test``, ``gcp_proxy`` and ``gcs_test`` connections of :func:`emulator_connections`, per module."""
    with emulator_connections(PROJECT, bigquery_emulator.endpoint, proxy.url, gcs_emulator.endpoint):
        yield


@pytest.fixture
def clean_proxy(proxy: LifecycleProxy) -> None:
    """Each test starts with the proxy's records and faults cleared and no RUNNING hold."""
    proxy.reset()
    proxy.set_hold(0.0)
