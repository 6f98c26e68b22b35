"""A BigQuery job-lifecycle proxy on 127.0.0.1, in front of the BigQuery emulator.

The emulator runs every job synchronously (DONE at insert) and re-runs a job whose id exists already. Real
BigQuery keeps jobs PENDING/RUNNING for a while and answers 409 for a duplicate job id. This proxy forwards
every request to the emulator and rewrites the job lifecycle to match BigQuery:

* jobs.insert of a job id that exists upstream → 409 ``duplicate`` (nothing forwarded, nothing re-run);
* for ``hold`` seconds after an insert, jobs.insert / jobs.get report the job RUNNING (getQueryResults waits,
  as BigQuery does, up to its ``timeoutMs`` for the job to end, then answers ``jobComplete: false``); afterwards
  the emulator's real result shows through;
* jobs.cancel of a held job makes it DONE with BigQuery's ``stopped`` error. The emulator already executed
  the SQL at insert time, so a cancel here hides the result but cannot undo side effects;
* faults by rule: a status (429, 503, …) with BigQuery's error body (its ``reason`` and ``message`` as given,
  or a usual reason for the status), a connection reset or a delay of ``delay_s`` seconds (then the request goes
  through) for the next ``count`` requests matching a method and path regex (and, if given, a job id regex: the
  inserted job's id, or the job a path names); a status or reset either instead of
  forwarding or after forwarding (the answer is lost on the way back); or ``"job_error"`` on jobs.insert: the job
  is forwarded (the emulator runs it) and is then reported DONE with ``status.errorResult`` of that ``reason``,
  as BigQuery reports a job that failed while running. Paths that are not BigQuery's are forwarded unchanged,
  so the proxy also fronts the storage emulator;
* it counts inserts, jobs.get calls and cancels per job id, and records each request's Authorization header;
* it checks every request it receives against Google's API contract (tests/support/api_contract.py): give it
  the emulator's own port (``Emulator.extra['direct']``) as upstream, so its forwards are not checked twice.
* per-job holds: ``hold_for`` maps an inserted job's configuration to (a name for it, its hold), so a benchmark
  can give every runner the same duration for the same dbt node; every insert lands in ``job_log()`` with its
  name, submit time and the time it turned DONE (wall clock, ``time.time()``);
* resumable uploads (dbt's seed loads): the upload session's ``Location`` is rewritten to point back at the
  proxy, so the data upload goes through it as well.

Use :class:`LifecycleProxy` from pytest (it runs its own event loop in a thread), or run it as a process:
``python -m tests.support.bq_lifecycle_proxy --upstream URL --port P --hold S`` and control it over HTTP:
``GET /_proxy/stats``, ``POST /_proxy/faults`` (a :class:`Fault` as JSON), ``POST /_proxy/hold``
``{"seconds": S}``, ``POST /_proxy/reset``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
from aiohttp import web

from tests.support.api_contract import LOG as CONTRACT_LOG
from tests.support.api_contract import check_request

_JOBS = re.compile(r"^/bigquery/v2/projects/(?P<project>[^/]+)/jobs$")
_JOB = re.compile(r"^/bigquery/v2/projects/(?P<project>[^/]+)/jobs/(?P<job>[^/]+)$")
_CANCEL = re.compile(r"^/bigquery/v2/projects/(?P<project>[^/]+)/jobs/(?P<job>[^/]+)/cancel$")
_RESULTS = re.compile(r"^/bigquery/v2/projects/(?P<project>[^/]+)/queries/(?P<job>[^/]+)$")
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "accept-encoding", "keep-alive"}
# Response headers passed back to the client besides the body and content type (upload sessions need these).
_PASS_BACK = ("location", "x-goog-upload-status", "x-goog-upload-url", "range")
_REASONS = {429: "rateLimitExceeded", 500: "internalError", 502: "badGateway", 503: "backendError",
            504: "timeout"}


@dataclass
class Fault:
    """Answer the next ``count`` requests matching ``method`` ('*' = any) and ``path`` (regex) with ``action``."""

    method: str
    path: str
    action: int | str  # an HTTP status, "reset" (no answer), "delay" or "job_error" (jobs.insert only)
    count: int = 1
    after_upstream: bool = False  # forward first: the upstream acted, the client never hears about it
    delay_s: float = 0.0  # for "delay": how long the request waits before it is forwarded
    reason: str | None = None  # BigQuery's error reason (a status's usual one when None; "job_error" needs it)
    message: str | None = None
    job: str | None = None  # a regex the request's job id must match (None: any request, with a job or not)

    def matches(self, method: str, path: str, job_id: str | None = None) -> bool:
        return (self.count > 0 and self.method in ("*", method) and re.search(self.path, path) is not None
                and (self.job is None or (job_id is not None and re.fullmatch(self.job, job_id) is not None)))


@dataclass
class _HeldJob:
    inserted_at: float
    hold: float
    cancelled: bool = False
    name: str | None = None
    submitted_wall: float = 0.0  # time.time() when the insert arrived
    answered_wall: float = 0.0  # time.time() when the insert was answered (the hold starts there)
    error: dict[str, str] | None = None  # an injected errorResult, shown once the job is DONE
    ended_at: float | None = None  # when a cancel ended it

    def running(self) -> bool:
        return not self.cancelled and time.monotonic() < self.inserted_at + self.hold


class LifecycleProxy:
    """The proxy's state and handlers; ``start()``/``stop()`` run it on a background thread."""

    def __init__(self, upstream: str, *, hold: float = 0.0, host: str = "127.0.0.1", port: int = 0,
                 hold_for: Callable[[dict[str, Any]], tuple[str | None, float | None]] | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.hold = hold
        # (name, hold) for a job configuration; a None hold means the global ``hold``.
        self.hold_for = hold_for
        self.host = host
        self.port = port
        self.inserts: Counter[str] = Counter()
        self.gets: Counter[str] = Counter()
        self.cancels: Counter[str] = Counter()
        self.configs: dict[str, Any] = {}  # job id -> the inserted job's configuration (labels, query)
        self.faults_fired: Counter[str] = Counter()
        # The Authorization header of every request, in order: tests check which credential reached BigQuery.
        self.authorizations: list[str] = []
        self._faults: list[Fault] = []
        self._jobs: dict[str, _HeldJob] = {}
        self._lock = threading.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---- control --------------------------------------------------------------------------------------

    def add_fault(self, method: str, path: str, action: int | str, count: int = 1, *,
                  after_upstream: bool = False, delay_s: float = 0.0, reason: str | None = None,
                  message: str | None = None, job: str | None = None) -> Fault:
        if action == "job_error" and not reason:
            raise ValueError("a job_error fault needs the errorResult's reason")
        fault = Fault(method.upper(), path, action, count, after_upstream, delay_s, reason, message, job)
        with self._lock:
            self._faults.append(fault)
        return fault

    def set_hold(self, seconds: float) -> None:
        self.hold = seconds

    def job_log(self) -> list[dict[str, Any]]:
        """Every successful insert since the last reset: job id, name, submitted / done (epoch seconds), hold."""
        with self._lock:
            return [{"job_id": job_id, "name": held.name, "submitted": held.submitted_wall,
                     "done": held.answered_wall + held.hold, "hold": held.hold, "cancelled": held.cancelled}
                    for job_id, held in self._jobs.items() if held.answered_wall]

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self._jobs.clear()
            for counter in (self.inserts, self.gets, self.cancels, self.faults_fired, self.configs,
                            self.authorizations):
                counter.clear()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"inserts": dict(self.inserts), "gets": dict(self.gets), "cancels": dict(self.cancels),
                    "faults_fired": dict(self.faults_fired), "hold": self.hold,
                    "pending_faults": [asdict(f) for f in self._faults if f.count > 0]}

    def timeline(self) -> dict[str, tuple[float, float]]:
        """Job id → (inserted, ended) in ``time.monotonic()`` seconds: DONE, or cancelled (its cancel's time)."""
        with self._lock:
            return {j: (h.inserted_at, h.ended_at if h.ended_at is not None else h.inserted_at + h.hold)
                    for j, h in self._jobs.items()}

    def failed_jobs(self) -> set[str]:
        """Job ids a ``job_error`` fault made fail."""
        with self._lock:
            return {j for j, h in self._jobs.items() if h.error is not None}

    # ---- lifecycle ------------------------------------------------------------------------------------

    async def astart(self) -> None:
        """Start serving on the running loop (the CLI uses this directly)."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def astop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def start(self) -> LifecycleProxy:
        """Serve from a daemon thread with its own event loop; return once it listens."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bq-lifecycle-proxy", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.astart(), self._loop).result(30)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self.astop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop.close()
        self._loop = None

    # ---- requests -------------------------------------------------------------------------------------

    def _take_fault(self, method: str, path: str, job_id: str | None) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path, job_id):
                    fault.count -= 1
                    self.faults_fired[str(fault.action)] += 1
                    return fault
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_proxy/"):
            return await self._control(request)
        with self._lock:
            self.authorizations.append(request.headers.get("Authorization", ""))
        # Requests reach the proxy as the package sent them: check them here (its own forwards are not ours).
        CONTRACT_LOG.record(check_request(request.method, request.path_qs, await request.read(),
                                          request.headers.get("Content-Type", "")))
        fault = self._take_fault(request.method, path, _job_id(request.method, path, await request.read()))
        if fault is not None and fault.action == "delay":
            await asyncio.sleep(fault.delay_s)
            fault = None
        job_error = None
        if fault is not None and fault.action == "job_error":
            job_error = {"reason": str(fault.reason),
                         "message": fault.message or f"{fault.reason} (injected by the lifecycle proxy)"}
            fault = None
        if fault is not None and not fault.after_upstream:
            return _fault_response(request, fault)
        response = await self._dispatch(request, path, job_error)
        return _fault_response(request, fault) if fault is not None else response

    async def _dispatch(self, request: web.Request, path: str,
                        job_error: dict[str, str] | None = None) -> web.StreamResponse:
        body = await request.read()
        if request.method == "POST" and (m := _JOBS.match(path)):
            return await self._insert(request, m["project"], body, job_error)
        if request.method == "GET" and (m := _JOB.match(path)):
            with self._lock:
                self.gets[m["job"]] += 1
            return await self._job_view(request, m["job"], body)
        if request.method == "POST" and (m := _CANCEL.match(path)):
            return await self._cancel(request, m["project"], m["job"])
        if request.method == "GET" and (m := _RESULTS.match(path)):
            held = self._jobs.get(m["job"])
            # As BigQuery does, getQueryResults waits up to timeoutMs (default 10 s) for a running job to end.
            wait_until = time.monotonic() + float(request.query.get("timeoutMs", 10_000)) / 1000
            while held is not None and held.running() and time.monotonic() < wait_until:
                await asyncio.sleep(min(0.05, max(wait_until - time.monotonic(), 0.0)))
            if held is not None and held.running():
                return web.json_response({"kind": "bigquery#getQueryResultsResponse", "jobComplete": False,
                                          "jobReference": {"projectId": m["project"], "jobId": m["job"]}})
        assert self._session is not None
        fwd = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        async with self._session.request(request.method, self.upstream + request.path_qs, data=body or None,
                                         headers=fwd, allow_redirects=False) as resp:
            data = await resp.read()
            back = {k: v.replace(self.upstream, self.url) for k, v in resp.headers.items() if k.lower() in _PASS_BACK}
            return web.Response(status=resp.status, body=data, headers=back,
                                content_type=resp.content_type or "application/json")

    async def _forward(self, method: str, path_qs: str, headers: Any, body: bytes) -> tuple[int, bytes, str]:
        assert self._session is not None
        fwd = {k: v for k, v in headers.items() if k.lower() not in _HOP_HEADERS}
        async with self._session.request(method, self.upstream + path_qs, data=body or None, headers=fwd) as resp:
            return resp.status, await resp.read(), resp.content_type or "application/json"

    async def _insert(self, request: web.Request, project: str, body: bytes,
                      job_error: dict[str, str] | None = None) -> web.StreamResponse:
        job = json.loads(body or b"{}")
        job_id = (job.get("jobReference") or {}).get("jobId")
        location = request.query.get("location")
        if job_id:
            query = f"?location={location}" if location else ""
            status, _, _ = await self._forward("GET", f"/bigquery/v2/projects/{project}/jobs/{job_id}{query}",
                                               request.headers, b"")
            if status == 200 or job_id in self._jobs:
                return web.json_response(
                    {"error": {"code": 409, "message": f"Already Exists: Job {project}:{job_id}",
                               "errors": [{"domain": "global", "reason": "duplicate",
                                           "message": f"Already Exists: Job {project}:{job_id}"}],
                               "status": "ALREADY_EXISTS"}}, status=409)
            name, hold = self.hold_for(job.get("configuration") or {}) if self.hold_for else (None, None)
            with self._lock:
                self.inserts[job_id] += 1
                self.configs[job_id] = job.get("configuration")
                # Registered before forwarding: the emulator's synchronous run takes a while, and a concurrent
                # duplicate must already see the id.
                self._jobs[job_id] = _HeldJob(time.monotonic(), self.hold if hold is None else hold, name=name,
                                              submitted_wall=time.time(), error=job_error)
        status, data, ctype = await self._forward("POST", request.path_qs, request.headers, body)
        if job_id and status == 200:
            with self._lock:
                self._jobs[job_id].inserted_at = time.monotonic()  # the hold starts when the insert answers
                self._jobs[job_id].answered_wall = time.time()
            data = self._rewrite(job_id, data)
        return web.Response(status=status, body=data, content_type=ctype)

    async def _job_view(self, request: web.Request, job_id: str, body: bytes) -> web.StreamResponse:
        status, data, ctype = await self._forward("GET", request.path_qs, request.headers, body)
        if status == 200:
            data = self._rewrite(job_id, data)
        return web.Response(status=status, body=data, content_type=ctype)

    async def _cancel(self, request: web.Request, project: str, job_id: str) -> web.StreamResponse:
        with self._lock:
            self.cancels[job_id] += 1
            held = self._jobs.get(job_id)
            if held is not None and held.running():
                held.cancelled = True
                held.ended_at = time.monotonic()
        query = request.path_qs.split("?", 1)[1] if "?" in request.path_qs else ""
        status, data, ctype = await self._forward(
            "GET", f"/bigquery/v2/projects/{project}/jobs/{job_id}" + (f"?{query}" if query else ""),
            request.headers, b"")
        if status != 200:
            return web.Response(status=status, body=data, content_type=ctype)
        job = json.loads(self._rewrite(job_id, data))
        return web.json_response({"kind": "bigquery#jobCancelResponse", "job": job})

    def _rewrite(self, job_id: str, data: bytes) -> bytes:
        """The emulator's finished job, as BigQuery would show it right now (RUNNING, cancelled or as is)."""
        held = self._jobs.get(job_id)
        if held is None:
            return data
        job = json.loads(data)
        stats = job.setdefault("statistics", {})
        if held.cancelled:
            message = "Job execution was cancelled: User requested cancellation"
            job["status"] = {"state": "DONE", "errorResult": {"reason": "stopped", "message": message},
                             "errors": [{"reason": "stopped", "message": message}]}
        elif held.running():
            job["status"] = {"state": "RUNNING"}
            stats.pop("endTime", None)
        elif held.error is not None:
            job["status"] = {"state": "DONE", "errorResult": held.error, "errors": [held.error]}
        return json.dumps(job).encode()

    async def _control(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/_proxy/stats":
            return web.json_response(self.stats())
        payload = await request.json() if request.can_read_body else {}
        if request.path == "/_proxy/faults":
            fault = self.add_fault(payload["method"], payload["path"], payload["action"],
                                   int(payload.get("count", 1)), after_upstream=bool(payload.get("after_upstream")),
                                   delay_s=float(payload.get("delay_s", 0.0)), reason=payload.get("reason"),
                                   message=payload.get("message"), job=payload.get("job"))
            return web.json_response(asdict(fault))
        if request.path == "/_proxy/hold":
            self.set_hold(float(payload["seconds"]))
            return web.json_response({"hold": self.hold})
        if request.path == "/_proxy/reset":
            self.reset()
            return web.json_response({"reset": True})
        return web.json_response({"error": f"unknown control path {request.path}"}, status=404)


def _job_id(method: str, path: str, body: bytes) -> str | None:
    """The job a request is about: the id in a jobs.insert body, or the one its path names."""
    if method == "POST" and _JOBS.match(path):
        try:
            return (json.loads(body or b"{}").get("jobReference") or {}).get("jobId")
        except ValueError:
            return None
    m = _JOB.match(path) or _CANCEL.match(path) or _RESULTS.match(path)
    return m["job"] if m else None


def _fault_response(request: web.Request, fault: Fault) -> web.StreamResponse:
    if fault.action == "reset":
        if request.transport is not None:
            request.transport.abort()  # no answer at all: the client sees a dropped connection
        return web.Response(status=500)
    status = int(fault.action)
    reason = fault.reason or _REASONS.get(status, "injected")
    message = fault.message or f"{reason} (injected by the lifecycle proxy)"
    return web.json_response(
        {"error": {"code": status, "message": message,
                   "errors": [{"domain": "global", "reason": reason, "message": message}]}},
        status=status, headers={"Retry-After": "0"} if status == 429 else None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="the BigQuery emulator's base URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--hold", type=float, default=0.0, help="seconds a new job stays RUNNING")
    args = parser.parse_args(argv)

    async def serve() -> None:
        proxy = LifecycleProxy(args.upstream, hold=args.hold, host=args.host, port=args.port)
        await proxy.astart()
        print(f"bq lifecycle proxy listening on {proxy.url} -> {proxy.upstream} (hold {proxy.hold}s)", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await proxy.astop()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
