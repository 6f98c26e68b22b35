"""Run a real Airflow 3 stack (api-server, scheduler, dag-processor, triggerer) for tests, demos, benchmarks.

On SQLite by default, on PostgreSQL given ``database_url``.
No pytest dependency: ``with AirflowStack(home, dags) as af: run_id = af.trigger("my_dag"); af.wait_for_run(...)``.
Each component is its own process group, so fault tests can kill and restart one (``kill_triggerer``).
The REST API v2 is reached with a token of the simple auth manager (user ``admin``, password in ``login``).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

BIN = Path(sys.executable).parent
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
TERMINAL_RUN_STATES = frozenset({"success", "failed"})
USERNAME = "admin"
# One REST call waits this long for its answer, and is sent this many times in all (see ``AirflowApi.api``).
API_TIMEOUT = 60
API_ATTEMPTS = 3
# Waits are upper bounds, first set on machines about three times faster than some CI machines of this kind (a
# 20M-step Python loop: 1 s there, 3 s on the slow ones, where two stacks and dbt share 2 CPUs). A wait that passes
# ends as soon as its condition holds, so the wider bound costs time only in a test that fails anyway. The waits
# below widen their ``timeout`` in place, so that their messages name the bound actually waited.
WAIT_SLACK = float(os.environ.get("COSMOS_TEST_WAIT_SLACK", "3"))


def deadline_in(seconds: float) -> float:
    """A ``time.monotonic()`` deadline for a wait bounded by ``seconds``, widened by WAIT_SLACK."""
    return time.monotonic() + seconds * WAIT_SLACK


# The supervisor in each LocalExecutor worker logs this line when a task process ends; ``duration`` covers the
# whole worker stint (task process start to exit), and each execute / execute_complete stint logs its own line.
_WORKLOAD_FINISHED = re.compile(r"^(?P<ts>\S+) .*?Workload finished(?P<rest>.*)$", re.MULTILINE)
_KV = re.compile(r"(\w+)=(\S+)")
_TI_ID = re.compile(r'"ti_id":\s*"([0-9a-f-]{36})"')


class AirflowStackError(RuntimeError):
    """A component failed, an API call failed, or a wait timed out; the message carries the diagnostics."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """preexec_fn: own process group, and SIGTERM if the harness process dies without calling stop() (Linux)."""
    os.setsid()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _tail(path: Path, chars: int = 3000) -> str:
    if not path.exists():
        return "(no log)"
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - chars))
        return f.read().decode(errors="replace")


@dataclass
class _Component:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


class AirflowApi:
    """A client of a running Airflow 3's REST API v2, signed in as a simple-auth-manager user.

    ``AirflowStack`` is one that also runs the processes; ``dev/container_test.py`` uses it alone, on the stack
    running in containers. Between polls, waiting calls run ``check_alive`` and a timeout's message adds
    ``process_logs``: both know nothing here, the processes' state in ``AirflowStack``.
    """

    def __init__(self, api_url: str, password: str, dags_folder: Path) -> None:
        self.api_url = api_url
        self.password = password
        self.dags_folder = Path(dags_folder)
        self._token: str | None = None

    def check_alive(self) -> None:
        """Raise when the stack behind the API is known to be down."""

    def process_logs(self, chars: int = 3000) -> str:
        return ""

    @property
    def login(self) -> dict[str, str]:
        """UI login: open ``url`` and sign in with ``username`` / ``password``."""
        return {"url": self.api_url, "username": USERNAME, "password": self.password}

    def wait_api(self, timeout: float) -> None:
        """Wait until the API answers its health endpoint, then sign in."""
        timeout *= WAIT_SLACK
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                with urllib.request.urlopen(f"{self.api_url}/api/v2/monitor/health", timeout=2):
                    break
            except (OSError, urllib.error.HTTPError) as e:
                if time.monotonic() > deadline:
                    raise AirflowStackError(f"api-server not up after {timeout}s\n{self.process_logs()}") from e
                time.sleep(0.3)
        self._token = self._new_token()

    # -- REST API ----------------------------------------------------------------------------------------------

    def _new_token(self) -> str:
        body = json.dumps({"username": USERNAME, "password": self.password}).encode()
        req = urllib.request.Request(
            f"{self.api_url}/auth/token", data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)["access_token"]

    def api(
        self, method: str, path: str, body: Any = None, params: Mapping[str, Any] | None = None, retry_auth: bool = True
    ) -> Any:
        """Call ``/api/v2{path}`` and return the decoded JSON (None when empty).

        A request that times out is sent again (``API_ATTEMPTS`` in all): on a loaded machine the api-server can
        wait on the metadata database longer than one timeout. Only calls that are safe to repeat go through here:
        ``trigger`` names its run, so a repeated POST answers 409 instead of starting a second run.
        """
        url = f"{self.api_url}/api/v2{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(1, API_ATTEMPTS + 1):
            headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
            if data is not None:
                headers["Content-Type"] = "application/json"
            req = urllib.request.Request(url, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=API_TIMEOUT) as resp:
                    raw = resp.read()
                return json.loads(raw) if raw else None
            except urllib.error.HTTPError as e:
                if e.code == 401 and retry_auth:  # token expired: get a new one once
                    self._token = self._new_token()
                    return self.api(method, path, body, params, retry_auth=False)
                raise AirflowStackError(
                    f"{method} {path} -> HTTP {e.code}: {e.read().decode(errors='replace')}") from e
            except TimeoutError as e:
                self.check_alive()
                if attempt == API_ATTEMPTS:
                    raise AirflowStackError(f"{method} {path}: no answer in {API_ATTEMPTS} x {API_TIMEOUT}s\n"
                                            f"{self.process_logs()}") from e
        raise AssertionError("unreachable")

    @staticmethod
    def _q(*parts: str) -> str:
        return "/".join(urllib.parse.quote(p, safe="") for p in parts)

    def import_errors(self) -> list[dict[str, Any]]:
        return self.api("GET", "/importErrors", params={"limit": 100})["import_errors"]

    def wait_for_dag(self, dag_id: str, timeout: float = 60.0, dag_file: str | None = None) -> dict[str, Any]:
        """Wait until the dag-processor has serialized ``dag_id``; fail fast on an import error naming it, or of
        ``dag_file`` (a file name, for DAGs whose id the file does not spell out, e.g. derived from ``__file__``)."""
        timeout *= WAIT_SLACK
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                return self.api("GET", f"/dags/{self._q(dag_id)}/details")
            except AirflowStackError as e:
                if "HTTP 404" not in str(e):
                    raise
            errors = self.import_errors()
            mine = [e for e in errors if dag_id in _file_text(self.dags_folder, e.get("filename", ""))
                    or (dag_file is not None and Path(e.get("filename", "")).name == dag_file)]
            if mine or time.monotonic() > deadline:
                text = "\n".join(f"{e['filename']}:\n{e['stack_trace']}" for e in errors) or "(no import errors)"
                what = "has an import error" if mine else f"not loaded within {timeout}s"
                raise AirflowStackError(f"DAG {dag_id!r} {what}; import errors:\n{text}\n{self.process_logs()}")
            time.sleep(0.5)

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None, run_id: str | None = None) -> str:
        """Start a run and return its id.

        Without ``run_id`` the id is a fresh random one, so a 409 can only mean that a POST sent again after a
        timeout found the run its first attempt started.
        """
        fresh = run_id is None
        run_id = run_id or f"manual__{datetime.now().strftime('%Y%m%dT%H%M%S')}_{secrets.token_hex(4)}"
        body: dict[str, Any] = {"logical_date": None, "conf": dict(conf or {}), "dag_run_id": run_id}
        try:
            self.api("POST", f"/dags/{self._q(dag_id)}/dagRuns", body)
        except AirflowStackError as e:
            if not (fresh and "HTTP 409" in str(e)):
                raise
        return run_id

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.api("GET", f"/dags/{self._q(dag_id, 'dagRuns', run_id)}")["state"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 120.0, poll: float = 0.5) -> str:
        """Poll until the run is success/failed and return that state; on timeout raise with states and logs."""
        timeout *= WAIT_SLACK
        deadline = time.monotonic() + timeout
        while True:
            state = self.run_state(dag_id, run_id)
            if state in TERMINAL_RUN_STATES:
                return state
            if time.monotonic() > deadline:
                tis = "\n".join(
                    f"  {t['task_id']}[{t['map_index']}] {t['state']} try={t['try_number']}"
                    for t in self.task_instances(dag_id, run_id)
                )
                raise AirflowStackError(
                    f"run {dag_id}/{run_id} still {state} after {timeout}s\ntask states:\n{tis}\n{self.process_logs()}"
                )
            self.check_alive()
            time.sleep(poll)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """All task instances of the run, as the API returns them (task_id, map_index, state, dates, try_number,
        duration, hostname, queue, pid, executor, id, next_method, ...)."""
        return self._all_pages(f"/dags/{self._q(dag_id, 'dagRuns', run_id)}/taskInstances", "task_instances")

    def _all_pages(self, path: str, key: str) -> list[dict[str, Any]]:
        """Every item of a paginated list endpoint (``key`` holds a page's items)."""
        out: list[dict[str, Any]] = []
        while True:
            page = self.api("GET", path, params={"limit": 100, "offset": len(out)})
            out += page[key]
            if len(out) >= page["total_entries"] or not page[key]:
                return out

    def task_instance(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        """One task instance as its own endpoint returns it: with ``rendered_fields`` (the rendered template fields,
        as the UI's Rendered Template tab shows them) and the trigger it waits on, if any."""
        parts = [dag_id, "dagRuns", run_id, "taskInstances", task_id, *([str(map_index)] if map_index >= 0 else [])]
        return self.api("GET", f"/dags/{self._q(*parts)}")

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1) -> str:
        """The task's log as the UI shows it (worker and triggerer parts), one line per record."""
        path = f"/dags/{self._q(dag_id, 'dagRuns', run_id, 'taskInstances', task_id, 'logs', str(try_number))}"
        res = self.api("GET", path, params={"full_content": "true", "map_index": map_index})
        return "\n".join(_render_log_record(r) for r in res.get("content", []))

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        path = f"/dags/{self._q(dag_id, 'dagRuns', run_id, 'taskInstances', task_id, 'xcomEntries', key)}"
        return self.api("GET", path, params={"map_index": map_index, "deserialize": "true"})["value"]

    def xcom_entries(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every XCom of the run, whatever task or key pushed it, each with its ``value``."""
        # The list endpoint gives keys only (``~`` = every task); the values come one by one.
        entries = self._all_pages(f"/dags/{self._q(dag_id, 'dagRuns', run_id, 'taskInstances')}/~/xcomEntries",
                                  "xcom_entries")
        return [{**e, "value": self.xcom(dag_id, run_id, e["task_id"], e["key"], e["map_index"])} for e in entries]

    def clear_task(self, dag_id: str, run_id: str, task_ids: list[str],
                   include_downstream: bool = False) -> list[dict[str, Any]]:
        """Clear the given tasks (whatever their state), and their downstream tasks if asked, so the scheduler runs
        them again; returns cleared TIs."""
        body = {"dry_run": False, "dag_run_id": run_id, "task_ids": task_ids, "only_failed": False,
                "include_downstream": include_downstream}
        return self.api("POST", f"/dags/{self._q(dag_id)}/clearTaskInstances", body)["task_instances"]



class AirflowStack(AirflowApi):
    """Airflow 3 with the LocalExecutor, each component a separate process; a context manager.

    The metadata database is SQLite in ``home`` unless ``database_url`` names another, e.g. an empty PostgreSQL
    database (``postgresql+psycopg2://user:pw@127.0.0.1:5432/db``); ``db migrate`` runs once per home.
    """

    def __init__(
        self,
        home: Path,
        dags_folder: Path,
        env: Mapping[str, str] | None = None,
        parallelism: int = 4,
        port: int | None = None,
        startup_timeout: float = 120.0,
        stop_timeout: float = 5.0,
        bin_dir: Path = BIN,
        database_url: str | None = None,
    ) -> None:
        # bin_dir: the environment whose `airflow` runs the stack (benchmarks run a second one, with Cosmos).
        self.bin_dir = Path(bin_dir)
        self.home = Path(home).resolve()
        self.port = port or free_port()
        super().__init__(f"http://127.0.0.1:{self.port}", secrets.token_urlsafe(12), Path(dags_folder).resolve())
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.logs = self.home / "logs"
        # SQLite serialises writers: under load a writer can wait more than pysqlite's default 5 s for the lock
        # (an api-server 500 "Database error" in the middle of a run), so let it wait longer.
        self.database_url = database_url or f"sqlite:///{self.home / 'airflow.db'}?timeout=60"
        self._components: dict[str, _Component] = {}
        self.env = self._build_env(parallelism, env or {})

    # -- configuration -----------------------------------------------------------------------------------------

    def _build_env(self, parallelism: int, extra: Mapping[str, str]) -> dict[str, str]:
        # Inherited AIRFLOW* settings (e.g. the test session's own AIRFLOW_HOME) must not leak into the stack.
        base = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        base.pop("PYTHONDONTWRITEBYTECODE", None)  # cold imports double start-up time; the cache lives in home
        url = f"http://127.0.0.1:{self.port}"
        return {
            **base,
            "PYTHONPYCACHEPREFIX": str(self.home / "pycache"),
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USERNAME}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database_url,
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": url,
            # The executor and the triggerer serve logs on fixed ports by default: two stacks would collide.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            # All processes must share these, or the api-server rejects the workers' execution tokens.
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            # A killed triggerer's triggers move to a live one once its heartbeat is this old (default 30 s).
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "5",
            **extra,
        }

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def __enter__(self) -> AirflowStack:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Migrate the database (once per SQLite home), then start the four components and wait for the API."""
        self.logs.mkdir(parents=True, exist_ok=True)
        # Written by us so the password is known; the auth manager only adds users missing from the file.
        (self.home / "passwords.json").write_text(json.dumps({USERNAME: self.password}))
        atexit.register(self.stop)
        try:
            # A SQLite file in home is migrated already (the demo copies a template); a server database may be
            # empty or shared, and migrating it again is a no-op.
            if not self.database_url.startswith("sqlite:") or not (self.home / "airflow.db").exists():
                self._run_cli(["db", "migrate"], self.logs / "db-migrate.log", timeout=180)
            for name in COMPONENTS:
                self.start_component(name)
            self.wait_api(self.startup_timeout)
        except BaseException:
            self.stop()
            raise

    def _run_cli(self, args: list[str], log: Path, timeout: float) -> None:
        with log.open("ab") as out:
            res = subprocess.run([str(self.bin_dir / "airflow"), *args], env=self.env, stdout=out, stderr=out,
                                 timeout=timeout)
        if res.returncode:
            raise AirflowStackError(f"airflow {' '.join(args)} exited {res.returncode}:\n{_tail(log)}")

    def start_component(self, name: str, *, command: str | None = None,
                        extra_env: Mapping[str, str] | None = None) -> None:
        """Start one component (``api-server``, ``scheduler``, ``dag-processor``, ``triggerer``); log appends.

        ``command``: the airflow subcommand when ``name`` is a second instance (e.g. ``triggerer-2``);
        ``extra_env``: settings of this process only (e.g. a triggerer's capacity)."""
        if name in self._components and self._components[name].proc.poll() is None:
            raise AirflowStackError(f"{name} is already running")
        args = [str(self.bin_dir / "airflow"), command or name]
        if name == "api-server":
            args += ["--port", str(self.port), "--host", "127.0.0.1"]
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                args, env={**self.env, **(extra_env or {})}, cwd=self.home, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        self._components[name] = _Component(name, proc, log)

    def kill_component(self, name: str, sig: int = signal.SIGKILL, timeout: float = 15.0) -> None:
        """Signal the component's whole process group (its forked workers too) and wait for the leader."""
        comp = self._components.get(name)
        if comp is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(comp.proc.pid, sig)
        try:
            comp.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(comp.proc.pid, signal.SIGKILL)
            comp.proc.wait()
        # Stragglers of the group (e.g. a task process still finishing) go too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(comp.proc.pid, signal.SIGKILL)

    def remove_component(self, name: str) -> None:
        """SIGKILL a component started for a while (e.g. a second triggerer) and forget it."""
        self.kill_component(name)
        self._components.pop(name, None)

    def kill_triggerer(self) -> None:
        self.kill_component("triggerer", signal.SIGKILL)

    def start_triggerer(self) -> None:
        self.start_component("triggerer")

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM every component group at once, SIGKILL what is left after ``timeout``; idempotent.

        The default is short: a triggerer waits ~10 s for its triggers to clean up, which tests do not need.
        """
        atexit.unregister(self.stop)
        timeout = self.stop_timeout if timeout is None else timeout
        live = [c for c in self._components.values() if c.proc.poll() is None]
        for comp in live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(comp.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for comp in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                comp.proc.wait(max(0.1, deadline - time.monotonic()))
        for comp in self._components.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(comp.proc.pid, signal.SIGKILL)
            comp.proc.wait()

    def check_alive(self) -> None:
        dead = [c for c in self._components.values() if c.proc.poll() is not None]
        if dead:
            names = ", ".join(f"{c.name} (exit {c.proc.returncode})" for c in dead)
            raise AirflowStackError(f"component(s) exited: {names}\n{self.process_logs()}")

    def process_logs(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {c.name}.log (tail) ---\n{_tail(c.log, chars)}" for c in self._components.values())

    # -- worker slot-seconds -----------------------------------------------------------------------------------

    def worker_stints(self) -> dict[str, list[tuple[datetime, float]]]:
        """(finished at, seconds) of every worker stint so far, by task-instance id, from the scheduler's log.

        Source: the LocalExecutor worker's supervisor logs ``Workload finished ... workload_id=<ti id>
        duration=<s>`` when the task process it started exits; a deferring task logs one line for ``execute``
        and one for the resumed method. A task that starts and ends in the triggerer logs none.
        """
        log = self.logs / "scheduler.log"
        return worker_stints_in(log.read_text(errors="replace") if log.exists() else "")

    def _ti_ids(self, dag_id: str, run_id: str, task_id: str) -> set[str]:
        """Task-instance ids of every try of a task: a retry gets a new id, and the API only shows the latest,
        so the earlier ones are read from the worker-side log files (``attempt=N.log``, JSON lines with ti_id)."""
        ids: set[str] = set()
        task_dir = self.logs / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        for path in task_dir.glob("**/attempt=*.log"):
            with path.open(errors="replace") as f:
                if m := _TI_ID.search(f.readline()):
                    ids.add(m[1])
        return ids

    def worker_seconds(self, dag_id: str, run_id: str, settle: float = 10.0) -> dict[str, float]:
        """Seconds each task of the run held a worker slot (summed over map indexes and stints), 0.0 if never.

        Exact per stint (see ``worker_stints``), keyed by task-instance id: kept across deferral, new for a retry
        (all tries count). A stint lasts until the task process exits, which the supervisor notices up to
        ``[workers] min_heartbeat_interval`` (default 5 s) after the task ended: that tail holds the slot too,
        and it is why this waits up to ``settle`` seconds for a stint ending after each worker task's end_date
        (a task that defers from a worker and ends in the triggerer has none: it costs the full ``settle``).
        """
        deadline = time.monotonic() + settle
        while True:
            tis = self.task_instances(dag_id, run_id)
            stints = self.worker_stints()
            ids = {t["task_id"]: set() for t in tis}
            for ti in tis:
                ids[ti["task_id"]] |= {ti["id"], *self._ti_ids(dag_id, run_id, ti["task_id"])}
            if time.monotonic() > deadline or all(_last_stint_logged(t, stints) for t in tis):
                return {task: float(sum(d for i in tids for _, d in stints.get(i, []))) for task, tids in ids.items()}
            time.sleep(0.5)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def worker_stints_in(scheduler_log: str) -> dict[str, list[tuple[datetime, float]]]:
    """(finished at, seconds) of every worker stint in a scheduler's log text, by task-instance id."""
    stints: dict[str, list[tuple[datetime, float]]] = {}
    for m in _WORKLOAD_FINISHED.finditer(_ANSI.sub("", scheduler_log)):
        fields = dict(_KV.findall(m["rest"]))
        if "workload_id" in fields and "duration" in fields:
            stints.setdefault(fields["workload_id"], []).append((_parse_ts(m["ts"]), float(fields["duration"])))
    return stints


def _parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _last_stint_logged(ti: dict[str, Any], stints: dict[str, list[tuple[datetime, float]]]) -> bool:
    """True when a task that ran on a worker (non-empty hostname) has a stint logged after its end_date."""
    if not ti.get("hostname") or not ti.get("end_date"):
        return True
    end = _parse_ts(ti["end_date"])
    return any(at >= end for at, _ in stints.get(ti["id"], []))


def _file_text(dags_folder: Path, filename: str) -> str:
    """Text of an import error's file (absolute or bundle-relative), '' when unreadable."""
    path = Path(filename)
    for candidate in (path, dags_folder / path):
        with contextlib.suppress(OSError):
            return candidate.read_text(errors="replace")
    return ""


def _render_log_record(rec: Any) -> str:
    if not isinstance(rec, dict):
        return str(rec)
    extra = {k: v for k, v in rec.items() if k not in {"timestamp", "event", "level", "logger"}}
    parts = [str(rec.get("timestamp", "")), str(rec.get("level", "")).upper(), str(rec.get("event", ""))]
    if extra:
        parts.append(json.dumps(extra, default=str))
    return " ".join(p for p in parts if p)


@contextlib.contextmanager
def airflow_stack(home: Path, dags_folder: Path, **kwargs: Any) -> Iterator[AirflowStack]:
    """Functional spelling of ``with AirflowStack(...)``."""
    with AirflowStack(home, dags_folder, **kwargs) as stack:
        yield stack
