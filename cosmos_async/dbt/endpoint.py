"""The recording endpoint: the fake BigQuery API dbt-bigquery talks to during the capture.

dbt-bigquery's ``api_endpoint`` profile field points dbt at this server on 127.0.0.1; no dbt code is patched.
It forwards reads to the real API (dataset/table metadata, SELECT queries a macro runs for introspection), so
dbt compiles against the warehouse as it is, and notes what each read touched (see
:mod:`cosmos_async.dbt.run_dependencies`). Writes — DDL, DML, scripts, dataset creation, and every query of a
test node — are recorded for the current node (:mod:`cosmos_async.dbt.attribution`) and answered with a finished
job that returned no rows, so dbt moves on as if they had run. A seed's CSV upload (a load job over the upload
endpoint, resumable or multipart) is recorded as a load step — the job configuration and the uploaded bytes — in
order with the node's statements, and a table delete becomes a ``DROP``. Requests the toolkit still cannot
replay (copy jobs and load jobs from URIs, dataset patches, table patches other than appended columns, dataset
deletes) are answered as if done too, and mark the node for LOCAL execution.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from cosmos_async.dbt.attribution import NodeCallback, Recorder
from cosmos_async.dbt.captured import CaptureError
from cosmos_async.dbt.column_probe import ProbeError, select_columns, table_resource
from cosmos_async.dbt.sql_relations import Relation, created_table_select, relations_read
from cosmos_async.dbt.table_patch import added_columns_sql

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


def statement_code(sql: str) -> str:
    """The statement's code alone, lower case: comments, strings and quoted names blanked, no trailing ``;``."""
    return _COMMENTS_AND_STRINGS.sub(" ", sql).strip().rstrip(";").strip().lower()


def is_read_only(sql: str) -> bool:
    """True for a single SELECT/WITH statement: safe to send to the real warehouse during capture."""
    code = statement_code(sql)
    return code.startswith(("select", "with", "(")) and ";" not in code


# dbt's column-schema probe (get_empty_subquery_sql): the select wrapped so that it returns its columns, no rows.
_SCHEMA_PROBE = re.compile(r"^select\s+\*\s+from\s*\(.*\)\s*as\s+__dbt_sbq\s+where\s+false\b.*\blimit\s+0$", re.S)


def is_schema_probe(sql: str) -> bool:
    """True for dbt's ``select * from (...) as __dbt_sbq where false ... limit 0``, which asks for column types."""
    return _SCHEMA_PROBE.match(statement_code(sql)) is not None


def _table_relation(m: re.Match) -> Relation:
    """The table a ``_TABLE`` path names."""
    return Relation(unquote(m["project"]), unquote(m["dataset"]), unquote(m["table"]))


def _handler(recorder: Recorder) -> type[BaseHTTPRequestHandler]:
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

        def _auth(self) -> dict[str, str]:
            """dbt's credentials on this request, for the reads the endpoint makes of its own."""
            return {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "x-goog-user-project")}

        def _forward(self, body: bytes, table: re.Match | None = None) -> None:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            resp = recorder.http.request(self.command, recorder.upstream + self.path, data=body or None,
                                         headers=headers, timeout=300)
            statement = recorder.creating_statement(table["table"]) if table is not None and \
                resp.status_code == 404 and self.command == "GET" else None
            created = self._created_table(table, statement) if statement is not None else None
            if created is not None:
                return self._send(200, created)
            self._relay(resp)

        def _listing(self, m: re.Match, listed: Mapping[str, str]) -> None:
            """A dataset's tables (or routines) as they will be once the other processes of a split capture have
            built theirs: their relations added to what BigQuery lists (the dataset may not exist yet)."""
            resp = recorder.http.get(recorder.upstream + self.path, headers=self._auth(), timeout=300)
            if not resp.ok and resp.status_code != 404:
                return self._relay(resp)
            answer = resp.json() if resp.ok else {"kind": f"bigquery#{m['kind'][:-1]}List"}
            if m["kind"] == "tables" and not answer.get("nextPageToken"):  # the last page gets them
                project, dataset = unquote(m["project"]), unquote(m["dataset"])
                tables = [t for t in answer.get("tables") or () if t["tableReference"]["tableId"] not in listed]
                tables += [{"kind": "bigquery#table", "id": f"{project}:{dataset}.{table}", "type": kind,
                            "tableReference": {"projectId": project, "datasetId": dataset, "tableId": table}}
                           for table, kind in sorted(listed.items())]
                answer.update(tables=tables, totalItems=len(tables))
            return self._send(200, answer)

        def _relay(self, resp: Any) -> None:
            """Hand BigQuery's answer on to dbt as it came."""
            self._send(resp.status_code, resp.content, {"Content-Type": resp.headers.get("Content-Type", "")})

        def _created_table(self, table: re.Match, statement: str) -> dict[str, Any] | None:
            """The table resource of a table this node creates, or None with the node sent to a worker."""
            # dbt reads the columns of a table this node creates (a snapshot's staging table, an incremental's
            # temp table with on_schema_change): recorded statements do not run, so it is not there yet. Its
            # columns are those of the select it is created from; what that select reads counts as this node's.
            asked = _table_relation(table)
            parsed = created_table_select(statement, asked.project)
            reason = f"dbt reads the columns of {asked.dataset}.{asked.table}, which this node creates itself"
            if parsed is None or parsed[0].key() != asked.key():
                recorder.fall_back(f"{reason} with a statement whose select cannot be taken apart")
                return None
            recorder.note_reads(relations_read(parsed[1], asked.project))
            try:
                fields = select_columns(recorder.http, recorder.upstream, asked.project, parsed[1],
                                        recorder.current_location(), self._auth())
            except (ProbeError, OSError) as exc:
                recorder.fall_back(f"{reason}, and BigQuery could not tell the columns of its select: {exc}")
                return None
            return table_resource(asked, fields)

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
                    listed = recorder.built_elsewhere.get((unquote(m["project"]), unquote(m["dataset"] or "")))
                    if listed and m["table"] is None and m["kind"] in ("tables", "routines"):
                        return self._listing(m, listed)
                return self._forward(body, _TABLE.match(path))
            if path.startswith("/upload/"):
                return self._upload(path, body)
            if self.command == "DELETE" and (m := _TABLE.match(path)):
                return self._drop_table(m["project"], m["dataset"], m["table"])
            if self.command in ("PATCH", "PUT") and (m := _TABLE.match(path)):
                return self._patch_table(m, body)
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
                                     f"/tables/{table}", headers=self._auth(), timeout=300)
            kind = _DROP_KIND.get(resp.json().get("type", "TABLE"), "TABLE") if resp.ok else "TABLE"
            recorder.record(f"DROP {kind} IF EXISTS `{project}`.`{dataset}`.`{table}`", None)
            return self._send(200, b"")

        def _snapshot_probe(self, project: str, body: dict[str, Any], query: str, reads: set[Relation]) -> None:
            # A snapshot asks for its select's column types: a merging run with the check strategy compares them
            # with its table's columns (so the answer must be real, and its reads count), and every run warns
            # when dbt_updated_at's type differs from its clock's. On a fresh start the parents are not built
            # yet and BigQuery answers "not found"; there is no table to compare with then, so the answer only
            # feeds the warning and has no columns, keeping the snapshot at setup. Asked here and answered as a
            # finished script (as a SELECT, dbt would fetch its destination), whether BigQuery fails the query
            # when it is inserted or when its results are read.
            location = (body.get("jobReference") or {}).get("location") or recorder.current_location()
            try:
                fields = select_columns(recorder.http, recorder.upstream, project, query, location, self._auth())
            except (ProbeError, OSError) as exc:
                if not getattr(exc, "not_found", False):
                    recorder.fall_back(f"BigQuery could not tell the column types of the snapshot's select: {exc}")
                return self._send(200, recorder.fake_job(project, body, "SCRIPT"))
            recorder.note_reads(reads)
            return self._send(200, recorder.fake_job(project, body, "SCRIPT", fields))

        def _patch_table(self, table: re.Match, raw: bytes) -> None:
            # dbt-bigquery appends columns with tables.patch (on_schema_change); the answer is the table as the
            # patch leaves it, which the client needs whole (its tableReference), so the current one is read.
            path = urlsplit(self.path).path
            resp = recorder.http.get(recorder.upstream + path, headers=self._auth(), timeout=300)
            if not resp.ok:
                return self._relay(resp)
            current, patch = resp.json(), json.loads(raw or b"{}")
            relation = _table_relation(table)
            statements = None
            if set(patch) <= {"schema", "tableReference"} and "schema" in patch:
                statements = added_columns_sql(relation, (current.get("schema") or {}).get("fields") or [],
                                               (patch.get("schema") or {}).get("fields") or [])
            if statements is None:
                recorder.fall_back(f"dbt-bigquery changes the warehouse through the API ({self.command} {path}) "
                                   "in a way that has no SQL here (only appending columns has)")
            for sql in statements or []:
                recorder.record(sql, current.get("location"))
            return self._send(200, {**current, **patch})

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
                reads = relations_read(query, default.get("projectId") or project, default.get("datasetId"))
                if recorder.current_is_snapshot() and not config.get("dryRun") and reads and is_schema_probe(query):
                    return self._snapshot_probe(project, body, query, reads)
                recorder.note_reads(reads)
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
def recording_endpoint(upstream: str, on_node_captured: NodeCallback | None = None
                       ) -> Iterator[tuple[str, Recorder]]:
    """Serve the recording endpoint on 127.0.0.1 for the duration of the block."""
    recorder = Recorder(upstream, on_node_captured)
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

