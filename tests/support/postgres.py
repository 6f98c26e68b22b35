"""A throwaway PostgreSQL server on 127.0.0.1 for Airflow's metadata database, from Debian's ``postgresql``
package (``apt-get install postgresql``; ``.ci/run`` installs it): its own data directory and a free port, one
fresh database per Airflow stack.

PostgreSQL refuses to run as root: as root the server runs as the package's ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.airflow import free_port

USER = "airflow"


def _bin_dir() -> Path:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql: "
                       "install Debian's package (apt-get install postgresql)")


class PostgresServer:
    """``start()`` initialises and starts the server, ``new_database()`` returns the URL of an empty database,
    ``stop()`` stops it and removes its data. A context manager."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="cosmos-async-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.password = secrets.token_urlsafe(16)
        self.bin = _bin_dir()
        self._as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        res = subprocess.run([*self._as_user, *args], capture_output=True, text=True, timeout=120)
        if res.returncode:
            raise RuntimeError(f"{' '.join(args)} exited {res.returncode}: {res.stdout}{res.stderr}")

    def start(self) -> PostgresServer:
        self.root.mkdir(parents=True, exist_ok=True)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._as_user:
            shutil.chown(self.root, "postgres")
            shutil.chown(pwfile, "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}",
                  "--auth=scram-sha-256")
        pwfile.unlink()
        # fsync off: a test database need not survive a power cut, and fsyncs are most of a migration's time.
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} " \
                  "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", options, "-w", "start")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def new_database(self, prefix: str = "airflow") -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        import psycopg2

        name = f"{prefix}_{secrets.token_hex(4)}"
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=USER, password=self.password,
                                dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

