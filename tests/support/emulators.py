"""Start the BigQuery and GCS emulators from PyPI on 127.0.0.1, each on a free port.

Used by the pytest fixtures, the demo and the benchmarks, so all three run the same set-up.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
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


def start_bigquery(workdir: Path, project: str = "demo-proj", port: int | None = None) -> Emulator:
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {**os.environ, "HOME": str(_duckdb_home(workdir))}
    log = workdir / "bqemulator.log"
    proc = subprocess.Popen(
        [str(BIN / "bqemulator"), "start", "--rest-port", str(port), "--grpc-port", str(free_port()),
         "--project", project, "--log-level", "warning"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    _wait_http(f"{endpoint}/bigquery/v2/projects/{project}/datasets", proc, log)
    return Emulator(endpoint, proc, log, {"project": project})


def start_gcs(workdir: Path, bucket: str = "cosmos-async", port: int | None = None) -> Emulator:
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = workdir / "gcs-emulator.log"
    proc = subprocess.Popen(
        [str(BIN / "gcp-storage-emulator"), "start", "--host=127.0.0.1", f"--port={port}", "--in-memory",
         f"--default-bucket={bucket}", "--quiet"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    _wait_http(f"{endpoint}/storage/v1/b/{bucket}", proc, log)
    return Emulator(endpoint, proc, log, {"bucket": bucket})
