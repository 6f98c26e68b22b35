"""Attribution: which node each request dbt sends during the capture belongs to, and what it recorded there.

dbt runs with one thread, so dbtRunner's event callbacks bracket every node: a request that arrives between a
node's ``NodeStart`` and ``NodeFinished`` is that node's; before the first node it belongs to the on-run-start
hooks, after the last to the on-run-end hooks. The :class:`Recorder` also answers for the jobs it recorded
instead of running them (a finished job without rows; a test: zero failures).
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from cosmos_async.dbt.captured import LoadCapture, NodeCapture
from cosmos_async.dbt.sql_relations import Relation

# Told of each node as dbt finishes it: (unique_id, what was recorded for it).
NodeCallback = Callable[[str, NodeCapture], None]
_TEST_RESULT = {
    "schema": {"fields": [{"name": "failures", "type": "INTEGER"}, {"name": "should_warn", "type": "BOOLEAN"},
                          {"name": "should_error", "type": "BOOLEAN"}]},
    "rows": [{"f": [{"v": "0"}, {"v": "false"}, {"v": "false"}]}],
    "totalRows": "1",
}


class Recorder:
    """State shared by the endpoint's request threads and dbt's event callback."""

    def __init__(self, upstream: str, on_node_captured: NodeCallback | None = None) -> None:
        """``on_node_captured(unique_id, node)`` is called in dbt's thread as each node finishes (its upload)."""
        import requests

        self.upstream = upstream.rstrip("/")
        self.http = requests.Session()
        self.lock = threading.Lock()
        self.current: str | None = None
        self.node_kind: dict[str, str] = {}
        self.started_any = False
        # Later capture passes re-run dbt's run-start work (schemas, hooks); only the first pass records it.
        self.first_pass = True
        self.nodes: dict[str, NodeCapture] = {}
        self.on_run_start = NodeCapture()
        self.on_run_end = NodeCapture()
        self.fake_jobs: dict[str, dict[str, Any]] = {}
        self.project = "unknown"
        self.invocation_id = ""
        self.uploads: dict[str, dict[str, Any]] = {}
        self.on_node_captured = on_node_captured
        # In a capture split between processes: (project, dataset) -> {table: type} the other processes build,
        # listed in the dataset's tables as they will be (see cosmos_async.dbt.shares).
        self.built_elsewhere: dict[tuple[str, str], dict[str, str]] = {}

    # -- dbt events -------------------------------------------------------------------------------
    def on_event(self, msg: Any) -> None:
        name = msg.info.name
        if name not in ("NodeStart", "NodeFinished"):
            return
        unique_id = msg.data.node_info.unique_id
        finished = None
        with self.lock:
            if name == "NodeStart":
                # The id dbt puts in its job labels (and query comments that ask for it) in this invocation.
                self.invocation_id = self.invocation_id or msg.info.invocation_id
                self.current = unique_id
                self.started_any = True
                self.nodes[unique_id] = NodeCapture()
            elif self.current == unique_id:
                self.current = None
                finished = self.nodes[unique_id]
        if finished is not None and self.on_node_captured is not None:
            self.on_node_captured(unique_id, finished)

    def target(self) -> NodeCapture:
        if self.current is not None:
            return self.nodes[self.current]
        if not self.first_pass:
            return NodeCapture()  # discarded
        return self.on_run_end if self.started_any else self.on_run_start

    def current_is_test(self) -> bool:
        return self.current is not None and self.current.startswith(("test.", "unit_test."))

    def current_is_source(self) -> bool:
        return self.current is not None and self.current.startswith("source.")

    def current_is_snapshot(self) -> bool:
        return self.current is not None and self.current.startswith("snapshot.")

    # -- requests ---------------------------------------------------------------------------------
    def record(self, sql: str, location: str | None, configuration: dict[str, Any] | None = None) -> None:
        with self.lock:
            target = self.target()
            if configuration is not None:
                target.configurations.extend([None] * (len(target.statements) - len(target.configurations)))
                target.configurations.append(configuration)
            target.statements.append(sql)
            target.location = target.location or location

    def record_load(self, job: Mapping[str, Any], data: bytes) -> None:
        # layout, not load: the capture may run in a virtualenv without aiohttp (async_py_requirements).
        from cosmos_async_triggers.layout import MAX_MULTIPART_BYTES

        with self.lock:
            target = self.target()
            if len(data) > MAX_MULTIPART_BYTES:
                # The trigger uploads in one request held in memory; dbt uploads big files in chunks itself.
                target.fallback = target.fallback or (f"its load job uploads {len(data)} bytes, more than the "
                                                      f"{MAX_MULTIPART_BYTES} a trigger uploads")
            target.loads.append(LoadCapture(dict(job.get("configuration") or {}), data, len(target.statements)))
            target.location = target.location or (job.get("jobReference") or {}).get("location")

    def creating_statement(self, table: str) -> str | None:
        """The statement recorded for the current node that creates ``table`` (the latest), if any."""
        pattern = re.compile(rf"create\s+(?:or\s+replace\s+)?(?:temp(?:orary)?\s+)?table\s+[^(]*?`?{re.escape(table)}`?"
                             r"[\s(]", re.IGNORECASE)
        with self.lock:
            return next((sql for sql in reversed(self.target().statements) if pattern.search(sql)), None)

    def current_location(self) -> str | None:
        with self.lock:
            return self.target().location

    def note_reads(self, relations: set[Relation]) -> None:
        with self.lock:
            reads = self.target().reads
            reads.extend(sorted(r for r in relations if r not in reads))

    def fall_back(self, reason: str) -> None:
        with self.lock:
            target = self.target()
            target.fallback = target.fallback or reason

    def fake_job(self, project: str, body: Mapping[str, Any], statement_type: str,
                 fields: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """A finished job for ``body``, its results (:meth:`query_results`) without rows, with ``fields`` as their
        columns."""
        ref = dict(body.get("jobReference") or {})
        ref.setdefault("projectId", project)
        ref.setdefault("jobId", f"cosmos_async_capture_{uuid.uuid4().hex}")
        now = str(int(time.time() * 1000))
        job = {
            "kind": "bigquery#job",
            "id": f"{ref['projectId']}:{ref.get('location', 'US')}.{ref['jobId']}",
            "jobReference": ref,
            "configuration": body.get("configuration") or {},
            "status": {"state": "DONE"},
            "statistics": {"creationTime": now, "startTime": now, "endTime": now,
                           "query": {"statementType": statement_type, "totalBytesProcessed": "0"}},
        }
        if job["configuration"].get("createSession"):
            # dbt passes the session on to its next jobs; the trigger swaps in the session its replay creates.
            job["statistics"]["sessionInfo"] = {"sessionId": f"cosmos_async_capture_session_{uuid.uuid4().hex}"}
        with self.lock:
            self.fake_jobs[ref["jobId"]] = {"job": job, "test": self.current_is_test(), "fields": fields or []}
        return job

    def query_results(self, job_id: str) -> dict[str, Any] | None:
        fake = self.fake_jobs.get(job_id)
        if fake is None:
            return None
        job = fake["job"]
        result = {"kind": "bigquery#getQueryResultsResponse", "jobReference": job["jobReference"],
                  "jobComplete": True, "schema": {"fields": fake["fields"]}, "rows": [], "totalRows": "0"}
        if fake["test"]:
            result.update(_TEST_RESULT)
        return result

