"""What Airflow stores of each trigger: the ``trigger`` table's rows of a running stack, decrypted.

A row lives only while its task is deferred (the triggerer deletes it once the event is handled), so the
recorder samples the table from a thread while DAGs run and keeps every row it saw. Each row's ``kwargs``
column is decrypted as Airflow reads it (``Trigger._decrypt_kwargs``: Fernet with the stack's
``[core] fernet_key``, or plain JSON when no key is set) and kept as text for secret scans.
"""

from __future__ import annotations

import configparser
import sqlite3
import threading
from pathlib import Path
from types import TracebackType


class TriggerRowRecorder:
    """Samples ``SELECT id, classpath, kwargs FROM trigger`` every ``interval`` seconds; ``rows`` maps each row seen
    to (classpath, decrypted kwargs JSON text). Rows are told apart by their stored kwargs, not their id: SQLite
    reuses the id of a deleted row."""

    def __init__(self, airflow_home: Path, interval: float = 0.2, database_url: str | None = None) -> None:
        self.db = airflow_home / "airflow.db"
        # A server database (the PostgreSQL run of the e2e tier) is read through SQLAlchemy; SQLite read-only.
        self._engine = None
        if database_url and not database_url.startswith("sqlite:"):
            import sqlalchemy

            self._engine = sqlalchemy.create_engine(database_url, pool_size=1)
        self.cfg = airflow_home / "airflow.cfg"
        self.interval = interval
        self.rows: dict[str, tuple[str, str]] = {}  # stored (encrypted) kwargs -> row
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="trigger-row-recorder", daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> TriggerRowRecorder:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(5)
        if self._engine is not None:
            self._engine.dispose()

    def seen(self) -> dict[str, tuple[str, str]]:
        with self._lock:
            return dict(self.rows)

    def _decrypt(self, value: str) -> str:
        if value.startswith("{"):
            return value  # no fernet key: Airflow stored the JSON as is
        from cryptography.fernet import Fernet, MultiFernet

        parser = configparser.ConfigParser(interpolation=None)
        parser.read(self.cfg)
        keys = [k.strip() for k in parser.get("core", "fernet_key", fallback="").split(",") if k.strip()]
        return MultiFernet([Fernet(k.encode()) for k in keys]).decrypt(value.encode()).decode()

    def _fetch(self) -> list[tuple[int, str, str]]:
        query = "SELECT id, classpath, kwargs FROM trigger"
        if self._engine is not None:
            import sqlalchemy

            with self._engine.connect() as conn:
                return [tuple(row) for row in conn.execute(sqlalchemy.text(query))]
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=2) as conn:
            return conn.execute(query).fetchall()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                found = self._fetch()
            except Exception as exc:  # e.g. locked for a moment by a writer: the next sample sees the row
                self.errors.append(str(exc))
                continue
            for trigger_id, classpath, kwargs in found:
                if kwargs not in self.rows:
                    try:
                        text = self._decrypt(kwargs)
                    except Exception as exc:  # a test asserting on rows then sees why they are missing
                        self.errors.append(f"trigger {trigger_id}: cannot decrypt: {type(exc).__name__}")
                        continue
                    with self._lock:
                        self.rows[kwargs] = (classpath, text)
