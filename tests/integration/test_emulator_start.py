"""The emulators' start, under the race every parallel test run has: the free port picked is taken before use."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import emulators


def test_gcs_emulator_starts_on_another_port_when_its_port_is_taken_fault_injected(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injected: the first port handed out is held by another socket, as another xdist worker's would be."""
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        real = emulators.free_port
        ports: Iterator[int] = iter([taken])
        monkeypatch.setattr(emulators, "free_port", lambda: next(ports, None) or real())
        emulator = emulators.start_gcs(tmp_path, bucket="retry-bucket")
        try:
            assert not emulator.endpoint.endswith(f":{taken}")
            with urllib.request.urlopen(f"{emulator.endpoint}/storage/v1/b/retry-bucket", timeout=5) as res:
                assert res.status == 200
        finally:
            emulator.stop()
