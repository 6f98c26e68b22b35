"""Capture, per dbt node, every statement dbt would run on BigQuery, without running any of them.

The one seam into dbt: dbt-bigquery's ``api_endpoint`` profile field points dbt at a recording endpoint on
127.0.0.1, and dbtRunner's event callbacks say which node is running (dbt runs with one thread, so every
request between ``NodeStart`` and ``NodeFinished`` belongs to that node). No dbt code is patched.

The endpoint forwards reads to the real API (dataset/table metadata, SELECT queries a macro runs for
introspection), so dbt compiles against the warehouse as it is, and notes what each read touched: a node whose
reads touch what another node of the run builds is compiled later instead (:mod:`cosmos_async.run_dependencies`).
Writes — DDL, DML, scripts, dataset creation,
and every query of a test node — are recorded and answered with a finished job that returned no rows (tests:
zero failures), so dbt moves on as if they had run. A seed's CSV upload (a load job over the upload endpoint,
resumable or multipart) is recorded as a load step — the job configuration and the uploaded bytes — in order
with the node's statements, and a table delete becomes a ``DROP``. Requests the toolkit still cannot replay
(copy jobs and load jobs from URIs, table/dataset patches, dataset deletes) are answered as if done too, and
mark the node for LOCAL execution.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from cosmos_async.config import ProfileConfig
from cosmos_async.errors import CosmosAsyncError
from cosmos_async.run_dependencies import mark_run_dependencies
from cosmos_async.sql_relations import Relation, relations_read

if TYPE_CHECKING:
    from cosmos_async.project.manifest import Manifest

DEFAULT_BIGQUERY_ENDPOINT = "https://bigquery.googleapis.com"
ON_RUN_START = "on-run-start"
ON_RUN_END = "on-run-end"
_JOBS = re.compile(r"^/bigquery/v2/projects/(?P<project>[^/]+)/jobs/?$")
_JOB = re.compile(r"^/bigquery/v2/projects/(?P<project>[^/]+)/(?:jobs|queries)/(?P<job>[^/]+)(?:/cancel)?$")
_DATASETS = re.compile(r"^/bigquery/v2/projects/(?P<project>[^/]+)/datasets/?$")
_TABLE = re.compile(r"^/bigquery/v2/projects/(?P<project>[^/]+)/datasets/(?P<dataset>[^/]+)/tables/(?P<table>[^/]+)$")
# Metadata reads: datasets.list, datasets.get, tables.list/routines.list, tables.get/tabledata.list/routines.get.
_METADATA = re.compile(r"^/bigquery/v2/projects/(?P<project>[^/]+)/datasets(?:/(?P<dataset>[^/]+)"
                       r"(?:/(?P<kind>tables|routines|models)(?:/(?P<table>[^/]+)(?:/data)?)?)?)?/?$")
_UPLOAD_JOBS = re.compile(r"^/upload/bigquery/v2/projects/(?P<project>[^/]+)/jobs/?$")
_CONTENT_RANGE = re.compile(r"bytes (?:\d+-(?P<last>\d+)|\*)/(?P<total>\d+|\*)")
_DROP_KIND = {"VIEW": "VIEW", "MATERIALIZED_VIEW": "MATERIALIZED VIEW", "EXTERNAL": "EXTERNAL TABLE"}
_COMMENTS_AND_STRINGS = re.compile(
    r"/\*.*?\*/|--[^\n]*|#[^\n]*|'(?:\\.|[^'\\])*'|\"(?:\\.|[^\"\\])*\"|`[^`]*`", re.S
)
_TEST_RESULT = {
    "schema": {"fields": [{"name": "failures", "type": "INTEGER"}, {"name": "should_warn", "type": "BOOLEAN"},
                          {"name": "should_error", "type": "BOOLEAN"}]},
    "rows": [{"f": [{"v": "0"}, {"v": "false"}, {"v": "false"}]}],
    "totalRows": "1",
}


# dbt-bigquery's words when it finds no credentials (no ADC) or Google refuses them (a bad or revoked key).
_DBT_AUTH_FAILURES = ("Failed to authenticate with supplied credentials", "Unable to generate access token")


class CaptureError(CosmosAsyncError):
    """dbt could not be run to capture the project's statements."""


@dataclass
class LoadCapture:
    """One load job dbt-bigquery ran with an upload (a seed): its configuration and the uploaded bytes."""

    configuration: dict[str, Any]  # the job's ``configuration`` exactly as sent (``load`` holds the table/schema)
    data: bytes
    after: int  # how many of the node's statements dbt ran before this load


@dataclass
class ScriptCapture:
    """Consecutive statements of a node run as one multi-statement query job, with dbt's job configuration."""

    statements: list[str]
    # What dbt-bigquery put on these statements' jobs (see :func:`replayable_configuration`); {} when unknown.
    configuration: dict[str, Any] = field(default_factory=dict)

    def script(self) -> str:
        """The statements as one BigQuery multi-statement job."""
        return "\n".join(_as_script_statement(s) for s in self.statements)


@dataclass
class NodeCapture:
    """What one node (or one hook phase) would execute."""

    statements: list[str] = field(default_factory=list)
    # Why the node must run through dbt in LOCAL mode instead; None when the statements are complete.
    fallback: str | None = None
    # BigQuery location of the recorded jobs (from dbt's job reference), when known.
    location: str | None = None
    loads: list[LoadCapture] = field(default_factory=list)
    # Relations (and listings) whose state dbt read while compiling this node, in the order first read.
    reads: list[Relation] = field(default_factory=list)
    # Per statement, the job configuration dbt sent with it; None for a statement dbt made through another API
    # (dataset creation, table delete) or recorded before configurations were. Shorter lists mean None.
    configurations: list[dict[str, Any] | None] = field(default_factory=list)

    def script(self) -> str:
        """The statements as one BigQuery multi-statement job (loads left out: see :meth:`steps`)."""
        return ScriptCapture(self.statements).script()

    def configuration(self, i: int) -> dict[str, Any] | None:
        return self.configurations[i] if i < len(self.configurations) else None

    def steps(self) -> list[ScriptCapture | LoadCapture]:
        """The node in dbt's order: runs of statements (one script each) and the loads between them.

        A run is also split where dbt changed the job configuration between two statements, so each script
        carries the configuration dbt gave all of its statements. A statement without one joins its run.
        """
        steps: list[ScriptCapture | LoadCapture] = []
        start = 0
        for load in sorted(self.loads, key=lambda x: x.after):
            if load.after > start:
                steps.extend(self._scripts(start, load.after))
            steps.append(load)
            start = load.after
        if start < len(self.statements) or not steps:
            steps.extend(self._scripts(start, len(self.statements)) or [ScriptCapture([])])
        return steps

    def _scripts(self, start: int, end: int) -> list[ScriptCapture]:
        scripts: list[ScriptCapture] = []
        current: ScriptCapture | None = None
        for i in range(start, end):
            config = self.configuration(i)
            if current is None or (config is not None and current.configuration and config != current.configuration):
                current = ScriptCapture([], dict(config or {}))
                scripts.append(current)
            elif config is not None and not current.configuration:
                current.configuration = dict(config)
            current.statements.append(self.statements[i])
        return scripts


@dataclass
class Capture:
    """The result of one capture run: per-node statements plus the run hooks."""

    nodes: dict[str, NodeCapture]
    on_run_start: NodeCapture
    on_run_end: NodeCapture


def _as_script_statement(sql: str) -> str:
    body = sql.strip().rstrip(";").strip()
    # DECLARE is only legal at the top of a script or block: give each statement that uses it its own block.
    if re.match(r"^(?:\s|/\*.*?\*/|--[^\n]*\n)*declare\b", body, re.I | re.S):
        return f"BEGIN\n{body};\nEND;"
    return f"{body};"


def is_read_only(sql: str) -> bool:
    """True for a single SELECT/WITH statement: safe to send to the real warehouse during capture."""
    code = _COMMENTS_AND_STRINGS.sub(" ", sql).strip().rstrip(";").strip().lower()
    return code.startswith(("select", "with", "(")) and ";" not in code


class _Recorder:
    """State shared by the endpoint's request threads and dbt's event callback."""

    def __init__(self, upstream: str) -> None:
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
        self.uploads: dict[str, dict[str, Any]] = {}

    # -- dbt events -------------------------------------------------------------------------------
    def on_event(self, msg: Any) -> None:
        name = msg.info.name
        if name not in ("NodeStart", "NodeFinished"):
            return
        unique_id = msg.data.node_info.unique_id
        with self.lock:
            if name == "NodeStart":
                self.current = unique_id
                self.started_any = True
                self.nodes[unique_id] = NodeCapture()
            elif self.current == unique_id:
                self.current = None

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

    def created_here(self, table: str) -> bool:
        """Whether a statement recorded for the current node creates ``table``."""
        pattern = re.compile(rf"create\s+(?:or\s+replace\s+)?(?:temp(?:orary)?\s+)?table\s+[^(]*?`?{re.escape(table)}`?"
                             r"[\s(]", re.IGNORECASE)
        with self.lock:
            return any(pattern.search(sql) for sql in self.target().statements)

    def note_reads(self, relations: set[Relation]) -> None:
        with self.lock:
            reads = self.target().reads
            reads.extend(sorted(r for r in relations if r not in reads))

    def fall_back(self, reason: str) -> None:
        with self.lock:
            target = self.target()
            target.fallback = target.fallback or reason

    def fake_job(self, project: str, body: Mapping[str, Any], statement_type: str) -> dict[str, Any]:
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
            self.fake_jobs[ref["jobId"]] = {"job": job, "test": self.current_is_test()}
        return job

    def query_results(self, job_id: str) -> dict[str, Any] | None:
        fake = self.fake_jobs.get(job_id)
        if fake is None:
            return None
        job = fake["job"]
        result = {"kind": "bigquery#getQueryResultsResponse", "jobReference": job["jobReference"],
                  "jobComplete": True, "schema": {"fields": []}, "rows": [], "totalRows": "0"}
        if fake["test"]:
            result.update(_TEST_RESULT)
        return result


def _handler(recorder: _Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out as two writes; with Nagle's algorithm the body then waits for the client's
        # delayed ACK of the headers (~40 ms on Linux), on every one of the thousands of requests dbt sends.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", (headers or {}).get("Content-Type", "application/json"))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _forward(self, body: bytes, table: re.Match | None = None) -> None:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            resp = recorder.http.request(self.command, recorder.upstream + self.path, data=body or None,
                                         headers=headers, timeout=300)
            if table is not None and resp.status_code == 404 and recorder.created_here(table["table"]):
                # dbt reads the columns of a relation this node creates (a snapshot's staging table, an
                # incremental's temp table with on_schema_change): it does not exist yet, because recorded
                # statements are not executed, so what dbt generates from it would be wrong.
                recorder.fall_back(f"dbt reads the columns of {table['dataset']}.{table['table']}, which this "
                                   "node creates itself")
            self._send(resp.status_code, resp.content, {"Content-Type": resp.headers.get("Content-Type", "")})

        def _handle(self) -> None:
            body = self._body()
            path = urlsplit(self.path).path
            if self.command == "POST" and (m := _JOBS.match(path)):
                return self._insert_job(m["project"], body)
            if self.command == "POST" and (m := _DATASETS.match(path)):
                return self._create_dataset(m["project"], body)
            if m := _JOBS.match(path) or _DATASETS.match(path):
                recorder.project = m["project"]
            if (m := _JOB.match(path)) and m["job"] in recorder.fake_jobs:
                if "/queries/" in path:
                    return self._send(200, recorder.query_results(m["job"]))
                return self._send(200, recorder.fake_jobs[m["job"]]["job"])
            if self.command in ("GET", "HEAD"):
                if m := _METADATA.match(path):
                    recorder.note_reads({_metadata_read(m)})
                return self._forward(body, _TABLE.match(path))
            if path.startswith("/upload/"):
                return self._upload(path, body)
            if self.command == "DELETE" and (m := _TABLE.match(path)):
                return self._drop_table(m["project"], m["dataset"], m["table"])
            recorder.fall_back(f"dbt-bigquery changes the warehouse through the API ({self.command} {path})")
            return self._send(200, json.loads(body or b"{}") if self.command != "DELETE" else b"")

        def _upload(self, path: str, body: bytes) -> None:
            if (m := _UPLOAD_JOBS.match(path)) and self.command == "POST":
                recorder.project = m["project"]
                if "uploadType=multipart" in self.path:
                    job, data = _parse_multipart(self.headers.get("Content-Type", ""), body)
                    return self._end_upload(job, data)
                # Start of a resumable upload: hand out a session URI on this endpoint, shaped as BigQuery's (the
                # upload path with an upload_id); the PUTs bring the data.
                session = uuid.uuid4().hex
                recorder.uploads[session] = {"job": json.loads(body or b"{}"), "data": bytearray()}
                host, port = self.server.server_address[:2]
                self.send_response(200)
                self.send_header("Location", f"http://{host}:{port}{path}?uploadType=resumable&upload_id={session}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            session = (parse_qs(urlsplit(self.path).query).get("upload_id") or [""])[0]
            upload = recorder.uploads.get(session)
            if upload is None:
                return self._send(404, {"error": {"code": 404, "message": f"no upload session at {path}"}})
            upload["data"] += body
            m = _CONTENT_RANGE.fullmatch((self.headers.get("Content-Range") or "").strip())
            if m and (m["total"] == "*" or len(upload["data"]) < int(m["total"])):
                # More chunks to come: tell the client how much arrived (resumable protocol's 308).
                self.send_response(308)
                if upload["data"]:
                    self.send_header("Range", f"bytes=0-{len(upload['data']) - 1}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            recorder.uploads.pop(session, None)
            return self._end_upload(upload["job"], bytes(upload["data"]))

        def _end_upload(self, job: dict[str, Any], data: bytes) -> None:
            if "load" in (job.get("configuration") or {}):
                recorder.record_load(job, data)
            else:
                recorder.fall_back("dbt-bigquery uploads data for a job that is not a load job")
            return self._send(200, recorder.fake_job(recorder.project, job, "LOAD"))

        def _drop_table(self, project: str, dataset: str, table: str) -> None:
            # tables.delete drops tables and views alike; SQL needs the kind, so ask the warehouse (a read).
            resp = recorder.http.get(f"{recorder.upstream}/bigquery/v2/projects/{project}/datasets/{dataset}"
                                     f"/tables/{table}", headers={k: v for k, v in self.headers.items()
                                                                  if k.lower() == "authorization"}, timeout=300)
            kind = _DROP_KIND.get(resp.json().get("type", "TABLE"), "TABLE") if resp.ok else "TABLE"
            recorder.record(f"DROP {kind} IF EXISTS `{project}`.`{dataset}`.`{table}`", None)
            return self._send(200, b"")

        def _insert_job(self, project: str, raw: bytes) -> None:
            body = json.loads(raw or b"{}")
            config = body.get("configuration") or {}
            query = (config.get("query") or {}).get("query")
            location = (body.get("jobReference") or {}).get("location")
            if query is None:
                kind = next(iter(k for k in config if k not in ("labels", "dryRun", "jobTimeoutMs")), "job")
                recorder.fall_back(f"dbt-bigquery runs a {kind} job for this node")
                return self._send(200, recorder.fake_job(project, body, kind.upper()))
            if recorder.current_is_source() and not config.get("dryRun"):
                # `dbt source freshness`: its query is what the source task runs; forwarded too, since dbt
                # needs its row to go on.
                recorder.record(query, location)
                return self._forward(raw)
            if config.get("dryRun") or (is_read_only(query) and not recorder.current_is_test()):
                default = (config.get("query") or {}).get("defaultDataset") or {}
                recorder.note_reads(relations_read(query, default.get("projectId") or project,
                                                   default.get("datasetId")))
                return self._forward(raw)
            recorder.record(query, location, replayable_configuration(config))
            return self._send(200, recorder.fake_job(project, body, "SCRIPT"))

        def _create_dataset(self, project: str, raw: bytes) -> None:
            body = json.loads(raw or b"{}")
            ref = body.get("datasetReference") or {}
            location = body.get("location")
            options = f" OPTIONS(location='{location}')" if location else ""
            recorder.record(f"CREATE SCHEMA IF NOT EXISTS `{ref.get('projectId', project)}`.`{ref['datasetId']}`"
                            f"{options}", location)
            return self._send(200, {"kind": "bigquery#dataset", **body,
                                    "id": f"{ref.get('projectId', project)}:{ref['datasetId']}"})

        def do_GET(self) -> None:
            self._handle()

        do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

    return Handler


def replayable_configuration(configuration: Mapping[str, Any]) -> dict[str, Any]:
    """A query job's configuration as dbt-bigquery sent it, minus what each replay sets itself: the SQL text
    (uploaded as the node's script) and ``dryRun``. The job id and location travel in ``jobReference``, not here.

    Kept: ``maximumBytesBilled``, ``priority``, ``jobTimeoutMs``, ``labels``, ``defaultDataset``,
    ``destinationEncryptionConfiguration``, ``createSession``/``connectionProperties``, ``reservation`` and
    whatever later dbt-bigquery versions add, so the trigger replays what dbt asked for and nothing else.
    """
    kept = {k: v for k, v in configuration.items() if k != "dryRun"}
    kept["query"] = {k: v for k, v in (configuration.get("query") or {}).items() if k != "query"}
    return json.loads(json.dumps(kept))  # a deep copy of plain JSON values


def _metadata_read(m: re.Match) -> Relation:
    project, dataset, table = (unquote(m[g]) if m[g] else None for g in ("project", "dataset", "table"))
    assert project is not None
    if table is not None or dataset is None:
        return Relation(project, dataset, table, contents=dataset is None)
    return Relation(project, dataset, contents=m["kind"] is not None)


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, Any], bytes]:
    """(job resource, media bytes) of a ``multipart/related`` upload: JSON part first, data second."""
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts = list(message.iter_parts()) if message.is_multipart() else []
    if len(parts) != 2:
        raise CaptureError(f"dbt-bigquery sent a multipart upload with {len(parts)} parts; expected 2")
    return json.loads(parts[0].get_payload(decode=True) or b"{}"), parts[1].get_payload(decode=True) or b""


@contextmanager
def recording_endpoint(upstream: str) -> Iterator[tuple[str, _Recorder]]:
    """Serve the recording endpoint on 127.0.0.1 for the duration of the block."""
    recorder = _Recorder(upstream)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(recorder))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="cosmos-async-capture", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", recorder
    finally:
        server.shutdown()
        server.server_close()
        recorder.http.close()


def capture_project(project_dir: Path, profile_config: ProfileConfig, *, select: Sequence[str] = (),
                    exclude: Sequence[str] = (), dbt_vars: Mapping[str, Any] | None = None,
                    full_refresh: bool = False, install_deps: bool = False,
                    env: Mapping[str, str] | None = None, sources: Sequence[str] = (),
                    partial_parse: Path | None = None) -> Capture:
    """Run ``dbt build`` once against the recording endpoint and return every node's statements.

    ``sources`` (``source:...`` selectors): also run ``dbt source freshness`` for them and record the query
    dbt sends per source (none for a source judged from table metadata). Their freshness verdicts at setup
    time do not matter: the source tasks judge again when they run.
    ``partial_parse``: where dbt's partial-parse state is kept between runs (see :mod:`cosmos_async.partial_parse`).

    A node whose capture fails, or that dbt skipped because an upstream capture failed, is retried in a
    further pass on its own; a node that still fails falls back to LOCAL with dbt's message as the reason.
    """
    from cosmos_async.dbt_invoke import DbtCommandError, dbt_workspace, environment, node_outcomes
    from cosmos_async.profiles import run_target

    with environment(env or {}):  # the profile may read env_var()s that ``env`` sets
        target = run_target(profile_config)
    upstream = target.get("api_endpoint") or DEFAULT_BIGQUERY_ENDPOINT
    failed: dict[str, str] = {}
    with recording_endpoint(upstream) as (url, recorder), dbt_workspace(
        project_dir, profile_config, install_deps=install_deps, env=env,
        target={**target, "api_endpoint": url, "threads": 1}, partial_parse=partial_parse,
    ) as workspace:
        base = ["build", "--resource-type", "model", "seed", "snapshot", "test"]
        if full_refresh:
            base.append("--full-refresh")
        pending_select, pending_exclude = list(select), list(exclude)
        while True:
            command = [*base, *(["--select", *pending_select] if pending_select else []),
                       *(["--exclude", *pending_exclude] if pending_exclude else [])]
            try:
                outcomes = node_outcomes(workspace, command, dbt_vars, [recorder.on_event])
            except DbtCommandError as exc:
                if not any(phrase in str(exc) for phrase in _DBT_AUTH_FAILURES):
                    raise
                # dbt's text names the cause but suggests impersonation roles or nothing: say what to change.
                raise CaptureError(f"{_auth_failure(profile_config, target)}\n{exc}") from None
            recorder.first_pass = False
            failed.update((o.unique_id, o.message) for o in outcomes if o.status == "error")
            skipped = [o for o in outcomes if o.status == "skipped"]
            # A skipped node is retried without its failed parents; a pass that only skips would loop forever.
            if not skipped or len(skipped) == len(outcomes):
                failed.update((o.unique_id, "dbt skipped it after an upstream capture failed") for o in skipped)
                break
            pending_select, pending_exclude = [o.selector for o in skipped], []
        if sources:
            _capture_freshness(workspace, list(sources), dbt_vars, recorder)
        manifest = _run_manifest(workspace.target_dir)
    for unique_id, message in failed.items():
        node = recorder.nodes.setdefault(unique_id, NodeCapture())
        node.fallback = node.fallback or f"its statements could not be captured: {message}"
    capture = Capture(recorder.nodes, recorder.on_run_start, recorder.on_run_end)
    project = recorder.project if recorder.project != "unknown" else str(target.get("project") or "")
    mark_run_dependencies(capture, manifest, project)
    return capture


def _capture_freshness(workspace: Any, sources: list[str], dbt_vars: Mapping[str, Any] | None,
                       recorder: _Recorder) -> None:
    from cosmos_async.dbt_invoke import node_outcomes

    # Stale or missing sources are no capture failure: the source tasks judge them when they run.
    node_outcomes(workspace, ["source", "freshness", "--select", *sources], dbt_vars, [recorder.on_event])


def _run_manifest(target_dir: Path) -> Manifest | None:
    """The manifest dbt wrote for the capture run (its relation names say what each node builds)."""
    from cosmos_async.project.manifest import parse_manifest

    try:
        return parse_manifest(json.loads((target_dir / "manifest.json").read_text()))
    except (OSError, ValueError, CosmosAsyncError):
        return None  # the recorded statements still say what each node writes


def _auth_failure(profile_config: ProfileConfig, target: Mapping[str, Any]) -> str:
    """What failed and what to change when dbt cannot authenticate to BigQuery with the profile's credentials."""
    mapping = profile_config.profile_mapping
    source = (f"connection {mapping.conn_id!r} ({type(mapping).__name__})" if mapping is not None
              else f"target {profile_config.target_name!r} of {profile_config.profiles_yml_filepath}")
    if target.get("method") == "oauth":
        fix = ("it uses Application Default Credentials, so make them available where the setup task runs "
               "(GOOGLE_APPLICATION_CREDENTIALS naming a key file, workload identity, or `gcloud auth "
               "application-default login`), or put a service-account key into the connection's keyfile_dict and "
               "use GoogleCloudServiceAccountDictProfileMapping")
    else:
        fix = ("Google refused its key (deleted, revoked or of another project): create a new key for the service "
               "account and put it in place of the old one")
    return f"dbt could not authenticate to BigQuery with {source}: {fix}."
