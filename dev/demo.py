"""The embedded demo: run the example DAG ``corner_shop`` (AIRFLOW_ASYNC) on emulated BigQuery and GCS with a real
Airflow 3 stack (api-server, scheduler, dag-processor, triggerer on SQLite), all on 127.0.0.1, no Docker.

Run ``./dev/demo`` (or ``python -m dev.demo`` in the project's environment). It prints one line per task state
change, a summary table, and where to look (UI login, emulator endpoints, tables built); it exits 1 when a task
failed and stops every process it started on exit, Ctrl-C or SIGTERM.

State lives under ``.demo/`` in the repository (ignored by git through its own ``.gitignore``): a migrated Airflow
database kept as a template (each invocation starts from a fresh copy of it), the bytecode cache and the logs of the
last invocation. Removing the directory gives a cold start.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from tests.support.airflow import BIN, AirflowStack
from tests.support.emulators import Emulator, start_bigquery, start_gcs

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dev" / "dags"
DEFAULT_HOME = REPO / ".demo"
DAG_ID = "corner_shop"
PROJECT = "demo-proj"
BUCKET = "cosmos-async-dev"
PREFIX = "cosmos-async"
CONN_ID = "gcp_conn"
MODEL_OPERATOR = "DbtBigQueryAsyncOperator"
FINISHED = frozenset({"success", "failed", "upstream_failed", "skipped", "removed"})
JOB_ID_WIDTH = 44
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
STATE_LABELS = {"deferred": "deferred (in triggerer)", "up_for_retry": "up for retry"}


# -- set-up ------------------------------------------------------------------------------------------------------


def prepare_home(root: Path) -> Path:
    """Create ``root`` (self-ignored by git) and a fresh Airflow home in it from a migrated database template."""
    root.mkdir(parents=True, exist_ok=True)
    (root / ".gitignore").write_text("# everything here is the demo's local state\n*\n")
    home = root / "airflow"
    # The database with its WAL files: a stale WAL (left by a killed process) would be replayed into the new copy.
    for stale in [home / "logs", *home.glob("airflow.db*")]:
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink(missing_ok=True)
    home.mkdir(exist_ok=True)
    template = root / f"airflow-{version('apache-airflow')}.db"
    if not template.exists():
        _migrate(home, template)
    shutil.copy(template, home / "airflow.db")
    return home


def _migrate(home: Path, template: Path) -> None:
    """``airflow db migrate`` into ``template`` (written whole or not at all), with the stack's own settings."""
    partial = template.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    env = {**AirflowStack(home, DAGS).env, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{partial}"}
    log = template.with_suffix(".migrate.log")
    with log.open("wb") as out:
        res = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, stdout=out, stderr=out, timeout=300)
    if res.returncode:
        raise RuntimeError(f"airflow db migrate failed ({res.returncode}); see {log}")
    with contextlib.closing(sqlite3.connect(partial)) as db:  # fold the WAL in: the template is one file
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    partial.rename(template)


def stack_env(bigquery: Emulator, gcs: Emulator) -> dict[str, str]:
    """The environment the DAG needs: the connection to both emulators and the [cosmos] settings."""
    conn = {"conn_type": "google_cloud_platform",
            "extra": {"project": PROJECT, "anonymous": True, "bigquery_api_endpoint": bigquery.endpoint,
                      "storage_api_endpoint": gcs.endpoint}}
    return {
        "AIRFLOW_CONN_GCP_CONN": json.dumps(conn),
        "AIRFLOW__COSMOS__REMOTE_TARGET_PATH": f"gs://{BUCKET}/{PREFIX}",
        "AIRFLOW__COSMOS__REMOTE_TARGET_PATH_CONN_ID": CONN_ID,
        "AIRFLOW__COSMOS__POLL_INTERVAL": "0.5",
        # The sources next to this file, whatever the environment has installed (both packages are editable in it).
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "triggers")]),
    }


# -- resource accounting -----------------------------------------------------------------------------------------


class TreeSampler:
    """Samples the RSS of this process and all its descendants; remembers every process seen (pid, start time)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.peak_rss = 0
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def start(self) -> TreeSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def sample(self) -> None:
        try:
            import psutil
        except ImportError:  # optional: the demo runs without it and reports no memory figure
            return
        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
                if proc.pid != me.pid:
                    self.seen.setdefault(proc.pid, proc.create_time())
        self.peak_rss = max(self.peak_rss, total)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


# -- following a run ---------------------------------------------------------------------------------------------


@dataclass
class TaskRow:
    task_id: str
    state: str
    is_model: bool
    duration: float | None = None
    try_number: int = 1
    jobs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def job_id(self) -> str:
        """The first BigQuery job id (middle elided when long), ``+N`` when the task ran more jobs."""
        ids = [str(j["job_id"]) for j in self.jobs if j.get("job_id")]
        if not ids:
            return "-"
        first = ids[0] if len(ids[0]) <= JOB_ID_WIDTH else f"{ids[0][:14]}…{ids[0][-(JOB_ID_WIDTH - 15):]}"
        return first + (f" +{len(ids) - 1}" if len(ids) > 1 else "")

    @property
    def bytes_processed(self) -> int | None:
        values = [int(j["total_bytes_processed"]) for j in self.jobs if j.get("total_bytes_processed") is not None]
        return sum(values) if values else None


def parse_jobs(value: Any) -> list[dict[str, Any]]:
    """The job dicts of a model task's ``return_value`` XCom (the API may hand them back as a repr string)."""
    if isinstance(value, str):
        for parse in (json.loads, ast.literal_eval):
            with contextlib.suppress(ValueError, SyntaxError):
                value = parse(value)
                break
    if isinstance(value, dict):
        value = [value]
    return [j for j in value if isinstance(j, dict)] if isinstance(value, list) else []


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def _is_model(ti: dict[str, Any]) -> bool:
    return MODEL_OPERATOR in {ti.get("operator"), ti.get("operator_name")}


def follow_run(stack: AirflowStack, run_id: str, out: TextIO, timeout: float, poll: float = 0.3) -> list[TaskRow]:
    """Print a line for every task state change until the run ends; return the tasks' final rows."""
    started = time.monotonic()
    last: dict[str, str | None] = {}
    rows: dict[str, TaskRow] = {}
    width = 0
    while True:
        tis = stack.task_instances(DAG_ID, run_id)
        width = max([width, *(len(t["task_id"]) for t in tis)])
        for ti in sorted(tis, key=lambda t: t.get("start_date") or ""):
            task_id, state = ti["task_id"], ti["state"]
            if state is None or last.get(task_id) == state:
                continue
            last[task_id] = state
            row = rows.setdefault(task_id, TaskRow(task_id, state, _is_model(ti)))
            row.state, row.duration, row.try_number = state, ti.get("duration"), ti.get("try_number") or 1
            note = ""
            if state == "success" and row.is_model:
                with contextlib.suppress(Exception):
                    row.jobs = parse_jobs(stack.xcom(DAG_ID, run_id, task_id))
                if row.bytes_processed is not None:
                    note = f"  {human_bytes(row.bytes_processed)} processed"
            label = STATE_LABELS.get(state, state)
            print(f"  {time.monotonic() - started:6.1f}s  {task_id:<{width}}  {label}{note}", file=out, flush=True)
        run_state = stack.run_state(DAG_ID, run_id)
        if run_state in ("success", "failed") and all(t["state"] in FINISHED for t in tis):
            for ti in tis:  # durations are final only now
                if ti["task_id"] in rows:
                    rows[ti["task_id"]].duration = ti.get("duration")
            return [rows.get(t["task_id"]) or TaskRow(t["task_id"], str(t["state"]), _is_model(t)) for t in tis]
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"run {run_id} still {run_state} after {timeout:.0f}s")
        stack.check_alive()
        time.sleep(poll)


def failure_excerpts(stack: AirflowStack, run_id: str, rows: Sequence[TaskRow], lines: int = 6) -> str:
    """The last error lines of each failed task's log, so a failure is explained without opening the UI."""
    out = []
    for row in rows:
        if row.state != "failed":
            continue
        try:
            log = stack.task_log(DAG_ID, run_id, row.task_id, try_number=row.try_number)
        except Exception as exc:
            out.append(f"  {row.task_id}: log unavailable ({exc})")
            continue
        errors = [_ANSI.sub("", line) for line in log.splitlines() if " ERROR " in line or "error" in line.lower()]
        out.append(f"  {row.task_id} (try {row.try_number}):")
        out += [f"    {line[:300]}" for line in errors[-lines:]]
    return "\n".join(out)


def format_summary(rows: Sequence[TaskRow]) -> str:
    """The summary table: task, status, BigQuery job id(s), task duration, job duration, bytes processed."""
    header = ("task", "status", "job id", "task s", "job s", "bytes processed")
    lines = [header]
    for row in sorted(rows, key=lambda r: (not r.is_model, r.task_id)):
        job_s = sum(float(j.get("duration_s") or 0) for j in row.jobs) if row.jobs else None
        lines.append((row.task_id, row.state, row.job_id,
                      "-" if row.duration is None else f"{row.duration:.1f}",
                      "-" if job_s is None else f"{job_s:.2f}", human_bytes(row.bytes_processed)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    text.insert(1, "  " + "  ".join("-" * w for w in widths))
    return "\n".join(text)


# -- where to look -----------------------------------------------------------------------------------------------


def built_tables(endpoint: str) -> list[str]:
    """``dataset.table (type, rows)`` for every table in the emulated project."""
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    client = bigquery.Client(project=PROJECT, credentials=AnonymousCredentials(),
                             client_options=ClientOptions(api_endpoint=endpoint))
    out = []
    for dataset in client.list_datasets():
        for item in client.list_tables(dataset.dataset_id):
            rows = ""
            with contextlib.suppress(Exception):
                if item.table_type == "TABLE":
                    rows = f", {client.get_table(item.reference).num_rows} rows"
            out.append(f"{dataset.dataset_id}.{item.table_id} ({(item.table_type or '?').lower()}{rows})")
    return out


def where_to_look(stack: AirflowStack, bigquery: Emulator, gcs: Emulator, home: Path) -> str:
    login = stack.login
    lines = [
        f"Airflow UI   {login['url']}  (user {login['username']}, password {login['password']})",
        f"BigQuery     {bigquery.endpoint}/bigquery/v2/projects/{PROJECT}/datasets  (emulator, in memory)",
        f"GCS          {gcs.endpoint}/storage/v1/b/{BUCKET}/o  (emulator, in memory; each run's SQL lives under "
        f"gs://{BUCKET}/{PREFIX}/ until its teardown)",
        f"Logs         {stack.logs}",
    ]
    try:
        tables = built_tables(bigquery.endpoint)
        lines.append(f"Tables       {len(tables)} in project {PROJECT}:")
        lines += [f"               {t}" for t in tables]
    except Exception as exc:  # the listing is informative only
        lines.append(f"Tables       could not be listed ({type(exc).__name__}: {exc})")
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------------------------


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def services(root: Path, parallelism: int) -> Iterator[tuple[AirflowStack, Emulator, Emulator]]:
    """Both emulators and the Airflow stack, stopped (in reverse order) whatever happens."""
    home = prepare_home(root)
    with contextlib.ExitStack() as stack:
        bigquery = start_bigquery(root / "bqemulator", project=PROJECT)
        stack.callback(bigquery.stop)
        gcs = start_gcs(root / "gcs", bucket=BUCKET)
        stack.callback(gcs.stop)
        airflow = AirflowStack(home, DAGS, env=stack_env(bigquery, gcs), parallelism=parallelism)
        stack.callback(airflow.stop)
        airflow.start()
        yield airflow, bigquery, gcs


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dev/demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="DAG runs to trigger in sequence (default 1); "
                        "from the second on, the incremental model merges")
    parser.add_argument("--keep", action="store_true", help="leave the stack up after the runs, until Ctrl-C")
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help="state directory (default .demo/)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per run (default 300)")
    parser.add_argument("--parallelism", type=int, default=4, help="Airflow worker slots (default 4)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parse_args(argv)
    root = args.home.resolve()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (e.g. `cmd &`)
    t0 = time.monotonic()
    sampler = TreeSampler().start()
    failed = False
    code = 0
    try:
        print(f"Starting the BigQuery and GCS emulators and Airflow {version('apache-airflow')} "
              f"(state in {root}) ...", file=out, flush=True)
        with services(root, args.parallelism) as (stack, bigquery, gcs):
            stack.wait_for_dag(DAG_ID, timeout=120)
            print(f"Airflow up after {time.monotonic() - t0:.1f}s; {DAG_ID} loaded.", file=out, flush=True)
            for n in range(1, args.runs + 1):
                run_id = stack.trigger(DAG_ID)
                print(f"\nRun {n}/{args.runs}: {run_id}", file=out, flush=True)
                rows = follow_run(stack, run_id, out, args.timeout)
                state = stack.run_state(DAG_ID, run_id)
                print(f"\nRun {n} {state}. Summary:\n{format_summary(rows)}", file=out, flush=True)
                if state != "success" or any(r.state != "success" for r in rows):
                    failed = True
                    print(f"\nFailed tasks (log excerpts):\n{failure_excerpts(stack, run_id, rows)}", file=out,
                          flush=True)
            print(f"\nWhere to look:\n{where_to_look(stack, bigquery, gcs, root)}", file=out, flush=True)
            if args.keep:
                print("\n--keep: everything stays up; press Ctrl-C to stop.", file=out, flush=True)
                while True:
                    stack.check_alive()
                    time.sleep(1)
        code = 1 if failed else 0
    except KeyboardInterrupt:
        code = 0 if args.keep and not failed else 130
    except Exception as exc:
        print(f"\ndemo failed: {type(exc).__name__}: {exc}", file=out, flush=True)
        code = 2
    finally:
        sampler.sample()
        sampler.stop()
        (root / "processes.json").write_text(json.dumps(
            {"pids": [[pid, started] for pid, started in sampler.seen.items()], "exit_code": code}))
    peak = f"{sampler.peak_rss / 2**20:.0f} MB" if sampler.peak_rss else "n/a (psutil missing)"
    print(f"\nStopped everything. Wall time {time.monotonic() - t0:.1f}s; peak RSS of the process tree {peak} "
          f"(sampled every {sampler.interval}s). Exit code {code}.", file=out, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
