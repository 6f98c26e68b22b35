"""The fault rig: a small synthetic dbt project run AIRFLOW_ASYNC on real Airflow, through the lifecycle proxy.

Used by the bounded fault tier (``tests/e2e/test_faults.py``, pytest) and by its long random tier
(``python -m tests.e2e.test_faults --rounds 20 --seed N``). Everything runs on 127.0.0.1:

* the BigQuery emulator, with :class:`FaultProxy` (a :class:`~tests.support.bq_lifecycle_proxy.LifecycleProxy`)
  in front of it on a thread of this process: the Airflow connection's ``bigquery_api_endpoint`` is the proxy,
  so the setup task's capture and every trigger go through it, and the proxy counts inserts and cancels per job
  id, holds the product's jobs RUNNING for ``hold`` seconds, and injects HTTP faults by rule;
* an :class:`~tests.support.airflow.AirflowStack` whose triggerer the tests SIGKILL and restart;
* the remote target path on the local disk (``file://``), shared by workers and the triggerer.

Job ids are deterministic (``cosmos_async_triggers.layout.job_id_base``), so the rig knows which job id belongs to
which task of which run without reading labels: a one-script node's job is ``{base}_0_{attempt}``, a seed's steps
are ``{base}_0_s{step}_{attempt}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from cosmos_async_triggers.layout import job_id_base
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from bench.synthetic import parse, write_project
from tests.support.airflow import WAIT_SLACK, AirflowStack, AirflowStackError
from tests.support.bq_lifecycle_proxy import LifecycleProxy
from tests.support.dbt_oracle import built_tables, dbt_build

REPO = Path(__file__).resolve().parents[2]
PROJECT = "demo-proj"
MODELS = 4  # two layers of two models, after one seed
# The execution_timeout of the first model in a ``*_timeout`` DAG. Airflow starts the clock when the scheduler
# defers the task, so it also covers the triggerer picking the trigger up and reading the run's index: under CI
# load 4 s once ran out before the job was submitted (nothing to cancel).
TIMEOUT_S = 15.0
ORACLE_DATASET = "fault_oracle"
SETUP, TEARDOWN = "dbt_setup_async", "dbt_teardown_async"
INSERT_PATH = r"^/bigquery/v2/projects/[^/]+/jobs$"  # jobs.insert (not the /upload/ endpoint of load jobs)
POLL_PATH = r"^/bigquery/v2/projects/[^/]+/jobs/cosmos_async_[^/]+$"  # jobs.get of the product's jobs
_ATTEMPT = re.compile(r"_(\d+)$")

DAG_FILE = '''"""Fault-tier DAGs (airflow DAG file): the synthetic project, AIRFLOW_ASYNC, no tests.

A DAG id ending in ``_worker`` runs its models on the worker path (start_from_trigger=False) with one retry, and
its models' first try is SIGKILLed when it resumes after its BigQuery job ran. One ending in ``_timeout`` gives
its first model an execution_timeout of TIMEOUT_S seconds. One ending in ``_retry`` gives every task one retry
after a second. One ending in ``_nosetup`` has a remote target path that cannot be written (its setup fails).
One ending in ``_cap1`` lets one model job of a run run at a time per triggerer (max_concurrent_jobs=1).
One starting with ``fault_triggerer`` waits for its models' parents in the triggerer
(wait_for_parents="triggerer") instead of through the scheduler.
"""
import os
import signal
from datetime import datetime, timedelta
from pathlib import Path

from cosmos_async import (DbtDag, ExecutionConfig, ExecutionMode, GoogleCloudServiceAccountDictProfileMapping,
                          ProfileConfig, ProjectConfig, RenderConfig, TestBehavior)

PROJECT = Path(__file__).parent / "synthetic"
KILLS = Path(__file__).parent.parent / "kills"
# A regular file: a remote target path below it cannot be created.
BLOCKED = Path(__file__).parent.parent / "remote-blocked"


def sigkill_first_resume(context):
    """Fault injection, test only: the task process dies when try 1 resumes after its job (worker path)."""
    ti = context["ti"]
    resuming = getattr(getattr(ti, "_ti_context_from_server", None), "next_method", None)
    if ti.task_id.startswith("model_") and ti.try_number == 1 and resuming:
        KILLS.mkdir(exist_ok=True)
        (KILLS / f"{ti.dag_id}__{ti.run_id}__{ti.task_id}").touch()
        os.kill(os.getpid(), signal.SIGKILL)


def fault_dag(dag_id: str, dataset: str) -> DbtDag:
    worker = dag_id.endswith("_worker")
    wait = "triggerer" if dag_id.startswith("fault_triggerer") else "scheduler"
    operator_args = {"location": "US", "start_from_trigger": not worker, "wait_for_parents": wait}
    if dag_id.endswith("_nosetup"):
        operator_args["remote_target_path"] = f"file://{BLOCKED}/remote"
    if dag_id.endswith("_cap1"):
        operator_args["max_concurrent_jobs"] = 1
    default_args = {}
    if worker:
        default_args = {"retries": 1, "retry_delay": timedelta(seconds=1), "pre_execute": sigkill_first_resume}
    elif dag_id.endswith("_retry"):
        default_args = {"retries": 1, "retry_delay": timedelta(seconds=1)}
    dag = DbtDag(
        dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
        project_config=ProjectConfig(dbt_project_path=PROJECT, manifest_path=PROJECT / "target" / "manifest.json"),
        profile_config=ProfileConfig(profile_name="synthetic", target_name="dev",
                                     profile_mapping=GoogleCloudServiceAccountDictProfileMapping(
                                         conn_id="gcp_conn", profile_args={"dataset": dataset})),
        execution_config=ExecutionConfig(execution_mode=ExecutionMode.AIRFLOW_ASYNC),
        render_config=RenderConfig(test_behavior=TestBehavior.NONE),
        operator_args=operator_args, default_args=default_args,
    )
    if dag_id.endswith("_timeout"):
        task = dag.task_dict["model_00000_run"]
        # start_trigger_args is built from the task when the DAG is serialized: this reaches the trigger's timeout.
        task.execution_timeout = timedelta(seconds=TIMEOUT_S)
    return dag


for _dag_id in DAG_IDS:
    globals()[_dag_id] = fault_dag(_dag_id, _dag_id)
'''


def log(message: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {message}", flush=True)


class FaultProxy(LifecycleProxy):
    """The lifecycle proxy, holding only the model tasks' jobs (``cosmos_async_model_*``) RUNNING.

    Other jobs (the on-run-start hook's and the seed's scripts, dbt's introspection queries forwarded by the setup
    task's capture) finish at once, so the hold slows down only the phase the faults are aimed at.
    """

    HELD_PREFIX = "cosmos_async_model_"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pin_on_insert: set[str] = set()

    def _rewrite(self, job_id: str, data: bytes) -> bytes:
        with self._lock:
            held = self._jobs.get(job_id)
            if held is not None and not job_id.startswith(self.HELD_PREFIX):
                held.hold = 0.0
            elif held is not None and job_id in self._pin_on_insert:
                self._pin_on_insert.discard(job_id)
                held.hold = float("inf")
        return super()._rewrite(job_id, data)

    def pin_when_inserted(self, job_id: str) -> None:
        """Keep this job RUNNING from its insert until :meth:`release` (or a cancel)."""
        with self._lock:
            self._pin_on_insert.add(job_id)

    def running(self) -> dict[str, float]:
        """Job id → seconds it stays RUNNING, for the jobs the proxy holds right now."""
        now = time.monotonic()
        with self._lock:
            return {j: h.inserted_at + h.hold - now for j, h in self._jobs.items() if h.running()}

    def pin(self, job_ids: list[str]) -> None:
        """Keep these jobs RUNNING until :meth:`release` (e.g. across a triggerer restart of unknown length)."""
        with self._lock:
            for job_id in job_ids:
                if job_id in self._jobs:
                    self._jobs[job_id].hold = float("inf")

    def release(self, job_ids: list[str], after: float = 0.5) -> None:
        """Let pinned jobs finish ``after`` seconds from now."""
        now = time.monotonic()
        with self._lock:
            for job_id in job_ids:
                held = self._jobs.get(job_id)
                if held is not None and held.hold == float("inf"):
                    held.hold = now + after - held.inserted_at

    def gets_of(self, job_ids: list[str]) -> dict[str, int]:
        with self._lock:
            return {j: self.gets[j] for j in job_ids}

    def fired(self) -> Counter[str]:
        with self._lock:
            return Counter(self.faults_fired)

    def pending_faults(self) -> list[dict[str, Any]]:
        return self.stats()["pending_faults"]


@dataclass
class RunCheck:
    """What one DAG run did, as the proxy and Airflow saw it."""

    dag_id: str
    run_id: str
    state: str
    tasks: dict[str, str]  # task id -> state
    inserts: dict[str, int]  # job id -> inserts, for every job of this run's node tasks
    cancels: dict[str, int]  # job id -> cancels
    job_task: dict[str, str]  # job id -> task id
    failed_jobs: set[str] = field(default_factory=set)  # job ids a job_error fault made fail
    early_children: list[str] = field(default_factory=list)  # "child<parent": a job started before a parent's ended
    gaps: list[float] = field(default_factory=list)  # seconds from the last parent job DONE to the child's insert

    def order(self, timeline: dict[str, tuple[float, float]], children: dict[str, list[str]]) -> None:
        """Fill ``early_children`` and ``gaps`` from the proxy's timeline and the DAG's task graph."""
        spans: dict[str, tuple[float, float]] = {}
        for job, task in self.job_task.items():
            if job in timeline:
                start, end = spans.get(task, (float("inf"), 0.0))
                spans[task] = (min(start, timeline[job][0]), max(end, timeline[job][1]))
        for parent, kids in children.items():
            for child in kids:
                if parent in spans and child in spans and spans[child][0] < spans[parent][1]:
                    self.early_children.append(f"{child}<{parent}")
        for child in spans:
            ends = [spans[p][1] for p, kids in children.items() if child in kids and p in spans]
            if ends and max(ends) != float("inf"):
                self.gaps.append(round(spans[child][0] - max(ends), 3))

    def model_jobs(self) -> dict[str, int]:
        return {j: n for j, n in self.inserts.items() if self.job_task[j].startswith("model_")}

    def duplicates(self) -> dict[str, int]:
        """Job ids inserted more than once, and retried attempts (``_N`` with N > 0) whose attempt N-1 did not
        fail by an injected fault: each means SQL ran twice."""
        def retried_after_fault(job_id: str) -> bool:
            n = _attempt(job_id)
            return n > 0 and f"{job_id[:-len(str(n))]}{n - 1}" in self.failed_jobs

        return {j: n for j, n in self.inserts.items()
                if n != 1 or (_attempt(j) != 0 and not retried_after_fault(j))}

    def models_run(self, extra: set[str] = frozenset()) -> list[str]:
        return sorted(t for t, s in self.tasks.items() if t.startswith("model_") and (s == "success" or t in extra))


@dataclass
class Tally:
    """Totals over every run of a tier, printed at the end."""

    faults: Counter[str] = field(default_factory=Counter)
    runs: int = 0
    jobs_submitted: int = 0
    jobs_failed_by_fault: int = 0  # model jobs a job_error fault failed: each one's model ran again
    models_run: int = 0
    duplicates: int = 0
    unexpected_cancels: int = 0
    tables_checked: int = 0
    wrong_tables: list[str] = field(default_factory=list)
    reattached: int = 0
    early_children: int = 0
    gaps: list[float] = field(default_factory=list)

    def add_run(self, check: RunCheck, *, models_run: list[str], expected_cancels: set[str] = frozenset()) -> None:
        self.runs += 1
        self.jobs_submitted += sum(check.model_jobs().values())
        self.jobs_failed_by_fault += len(check.failed_jobs & set(check.model_jobs()))
        self.models_run += len(models_run)
        self.duplicates += len(check.duplicates())
        self.unexpected_cancels += sum(n for j, n in check.cancels.items() if j not in expected_cancels)
        self.early_children += len(check.early_children)
        self.gaps += check.gaps

    def report(self) -> str:
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items())) or "none"
        return (f"fault tally: runs={self.runs} faults_injected={sum(self.faults.values())} ({faults}); "
                f"jobs_submitted={self.jobs_submitted} (failed by a fault: {self.jobs_failed_by_fault}) "
                f"models_run={self.models_run} "
                f"duplicate_or_retried_jobs={self.duplicates} unexpected_cancels={self.unexpected_cancels} "
                f"jobs_reattached_after_restart={self.reattached} children_started_early={self.early_children} "
                f"median_parent_done_to_child_submitted_s={statistics.median(self.gaps) if self.gaps else None} "
                f"tables_checked={self.tables_checked} "
                f"wrong_tables={len(self.wrong_tables)} {self.wrong_tables or ''}").rstrip()


def _attempt(job_id: str) -> int:
    m = _ATTEMPT.search(job_id)
    return int(m[1]) if m else -1


def _capture(out: list[Any], func: Any, *args: Any) -> None:
    try:
        out.append(func(*args))
    except BaseException as exc:
        out.append(exc)


class FaultRig:
    """Project, proxy and Airflow stack for fault runs; a context manager (starts everything, stops what it started)."""

    def __init__(self, root: Path, bigquery_endpoint: str, key: dict[str, str], dag_ids: list[str], *,
                 hold: float = 8.0, pycache: Path | None = None, parallelism: int = 4) -> None:
        self.root = Path(root)
        self.bigquery_endpoint = bigquery_endpoint
        self.key = key
        self.dag_ids = list(dag_ids)
        self.hold = hold
        self.pycache = pycache
        self.parallelism = parallelism
        self.proxy = FaultProxy(bigquery_endpoint, hold=hold)
        self.stack: AirflowStack | None = None
        self.client = bigquery.Client(project=PROJECT, credentials=AnonymousCredentials(),
                                      client_options=ClientOptions(api_endpoint=bigquery_endpoint))
        self.tally = Tally()
        self.project_dir = self.root / "dags" / "synthetic"
        self.task_ids: list[str] = []
        self.children: dict[str, list[str]] = {}  # task id -> task ids that depend on it
        self._oracle: dict[str, list[tuple]] | None = None
        self._oracle_thread: threading.Thread | None = None
        self._oracle_error: BaseException | None = None
        self._triggered: set[tuple[str, str]] = set()

    # ---- lifecycle ---------------------------------------------------------------------------------------------

    def __enter__(self) -> FaultRig:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        started = time.monotonic()
        dags = self.root / "dags"
        dags.mkdir(parents=True, exist_ok=True)
        write_project(self.project_dir, MODELS, tests_per_model=0)
        # dbt parse (~10 s of imports) runs while Airflow starts; the DAG file comes once the manifest exists.
        parsed: list[Path | BaseException] = []
        parser = threading.Thread(target=_capture, args=(parsed, parse, self.project_dir), name="fault-parse")
        parser.start()
        self.proxy.start()
        conn = {"conn_type": "google_cloud_platform",
                "extra": {"project": PROJECT, "keyfile_dict": json.dumps(self.key),
                          "bigquery_api_endpoint": self.proxy.url}}
        remote = self.root / "remote"
        remote.mkdir(exist_ok=True)
        (self.root / "remote-blocked").write_text("a file, so that a remote target path below it cannot be made\n")
        env = {"AIRFLOW_CONN_GCP_CONN": json.dumps(conn),
               "AIRFLOW__COSMOS__REMOTE_TARGET_PATH": f"file://{remote}",
               "AIRFLOW__COSMOS__POLL_INTERVAL": "0.5",
               # The DAG file does not change: re-parsing it every few seconds only takes CPU from the runs.
               "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "60",
               # A timed-out deferred task is noticed within a second, not 15.
               "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "triggers")])}
        if self.pycache is not None:
            env["PYTHONPYCACHEPREFIX"] = str(self.pycache)
        self.stack = AirflowStack(self.root / "airflow", dags, env=env, parallelism=self.parallelism)
        try:
            self.stack.start()
            parser.join()
            if isinstance(parsed[0], BaseException):
                raise parsed[0]
            self._read_graph(json.loads(parsed[0].read_text()))
            (dags / "fault_dags.py").write_text(DAG_FILE.replace("DAG_IDS", repr(self.dag_ids))
                                                .replace("TIMEOUT_S", repr(TIMEOUT_S)))
            for dag_id in self.dag_ids:
                self.stack.wait_for_dag(dag_id, timeout=120)
        except BaseException:
            self.stop()
            raise
        log(f"rig up in {time.monotonic() - started:.1f}s: proxy {self.proxy.url} (hold {self.hold}s) -> "
            f"{self.bigquery_endpoint}, Airflow {self.stack.api_url}, DAGs {self.dag_ids}")

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()
        self.proxy.stop()

    def _read_graph(self, manifest: dict[str, Any]) -> None:
        """Task ids of the DAG (TestBehavior.NONE: ``{name}_run`` / ``{name}_seed``) and who depends on whom."""
        def task_of(uid: str) -> str | None:
            node = manifest["nodes"].get(uid)
            if node is None or node["resource_type"] not in ("model", "seed"):
                return None
            return f"{node['name']}_{'seed' if node['resource_type'] == 'seed' else 'run'}"

        for uid in manifest["nodes"]:
            task = task_of(uid)
            if task is None:
                continue
            self.task_ids.append(task)
            self.children[task] = sorted({c for c in map(task_of, manifest["child_map"].get(uid, [])) if c})
        self.task_ids.sort()

    @property
    def child_models(self) -> set[str]:
        """Model tasks that depend on another model (the second layer)."""
        return {c for t in self.task_ids if t.startswith("model_") for c in self.children[t] if c.startswith("model_")}

    @property
    def af(self) -> AirflowStack:
        assert self.stack is not None, "the rig is not started"
        return self.stack

    # ---- jobs of a run -----------------------------------------------------------------------------------------

    def job_task(self, dag_id: str, run_id: str, job_id: str) -> str | None:
        for task in self.task_ids:
            if job_id.startswith(job_id_base(dag_id, task, run_id) + "_"):
                return task
        return None

    def run_jobs(self, dag_id: str, run_id: str) -> dict[str, str]:
        """Job id → task id, for every job the proxy saw inserted for this run's node tasks."""
        out = {}
        for job_id in self.proxy.stats()["inserts"]:
            task = self.job_task(dag_id, run_id, job_id)
            if task is not None:
                out[job_id] = task
        return out

    def task_job(self, dag_id: str, run_id: str, task_id: str) -> str:
        """The job id of a one-script node task's first attempt."""
        return f"{job_id_base(dag_id, task_id, run_id)}_0_0"

    def wait_running_model_job(self, dag_id: str, run_id: str, *, exclude: set[str] = frozenset(),
                               tasks: set[str] | None = None, min_left: float = 2.0, timeout: float = 180.0) -> str:
        """Wait until a model job of this run (of ``tasks`` if given, not in ``exclude``) is RUNNING with
        ``min_left`` seconds to go."""
        return self.pin_running_model_jobs([(dag_id, run_id)], exclude=exclude, tasks=tasks, min_left=min_left,
                                           timeout=timeout, pin=False)[(dag_id, run_id)]

    def pin_running_model_jobs(self, runs: list[tuple[str, str]], *, exclude: set[str] = frozenset(),
                               tasks: set[str] | None = None, min_left: float = 2.0, timeout: float = 180.0,
                               pin: bool = True) -> dict[tuple[str, str], str]:
        """For each (dag id, run id), wait until one of its model jobs (of ``tasks`` if given, not in ``exclude``)
        is RUNNING with ``min_left`` seconds to go; pin each as it is found, so that every run has one RUNNING
        at the end however far apart the runs are."""
        found: dict[tuple[str, str], str] = {}
        timeout *= WAIT_SLACK
        deadline = time.monotonic() + timeout
        while len(found) < len(runs):
            running = sorted(self.proxy.running().items(), key=lambda kv: -kv[1])
            for dag_id, run_id in (r for r in runs if r not in found):
                for job_id, left in running:
                    task = self.job_task(dag_id, run_id, job_id)
                    if (task and task.startswith("model_") and (tasks is None or task in tasks)
                            and job_id not in exclude and left >= min_left):
                        found[(dag_id, run_id)] = job_id
                        if pin:
                            self.proxy.pin([job_id])
                        break
                else:
                    if self.af.run_state(dag_id, run_id) in ("success", "failed"):
                        raise AirflowStackError(f"run {run_id} ended before a model job was RUNNING: "
                                                f"{self.states(dag_id, run_id)}\n{self.failed_logs(dag_id, run_id)}")
            if len(found) == len(runs):
                break
            if time.monotonic() > deadline:
                raise AirflowStackError(f"no RUNNING model job of {[r for r in runs if r not in found]} within "
                                        f"{timeout}s; proxy {self.proxy.stats()}\n{self.af.process_logs()}")
            time.sleep(0.1)
        return found

    def wait_task(self, dag_id: str, run_id: str, task_id: str, states: set[str], timeout: float = 180.0) -> str:
        timeout *= WAIT_SLACK
        deadline = time.monotonic() + timeout
        while True:
            state = self.states(dag_id, run_id).get(task_id)
            if state in states:
                return state
            if time.monotonic() > deadline:
                raise AirflowStackError(f"{task_id} of {run_id} is {state}, not {states}, after {timeout}s\n"
                                        f"{self.af.process_logs()}")
            time.sleep(0.2)

    def trigger_once(self, dag_id: str, run_id: str) -> bool:
        """Trigger the run unless this rig triggered it already (a test may start the next test's run early, so
        that its setup task overlaps a wait); True when this call triggered it."""
        if (dag_id, run_id) in self._triggered:
            return False
        self.af.trigger(dag_id, run_id=run_id)
        self._triggered.add((dag_id, run_id))
        return True

    @property
    def triggered(self) -> frozenset[tuple[str, str]]:
        """The (dag id, run id) runs this rig triggered."""
        return frozenset(self._triggered)

    def tries(self, dag_id: str, run_id: str) -> dict[str, int]:
        return {t["task_id"]: t["try_number"] for t in self.af.task_instances(dag_id, run_id)}

    def killed_on_resume(self, dag_id: str, run_id: str) -> list[str]:
        """Tasks whose first try the ``_worker`` DAG's hook SIGKILLed (markers it leaves before dying)."""
        kills = self.root / "kills"
        found = sorted(p.name.split("__")[-1] for p in kills.glob(f"{dag_id}__{run_id}__*")) if kills.exists() else []
        self.tally.faults["task_sigkill"] += len(found)
        return found

    def states(self, dag_id: str, run_id: str) -> dict[str, str]:
        return {t["task_id"]: t["state"] for t in self.af.task_instances(dag_id, run_id)}

    def failed_logs(self, dag_id: str, run_id: str, chars: int = 4000) -> str:
        """The log tails of the run's failed tasks, for an error message that says why the run ended."""
        parts = []
        for ti in self.af.task_instances(dag_id, run_id):
            if ti["state"] == "failed":
                try:
                    text = self.af.task_log(dag_id, run_id, ti["task_id"], try_number=max(ti["try_number"], 1))
                except Exception as exc:  # the message is for a failure already being raised
                    text = f"(log unreadable: {exc})"
                parts.append(f"--- {ti['task_id']} (try {ti['try_number']}) ---\n{text[-chars:]}")
        return "\n".join(parts)

    # ---- faults ------------------------------------------------------------------------------------------------

    def bounce_triggerer(self, down: float = 0.5) -> None:
        """SIGKILL the triggerer (its whole process group), wait ``down`` seconds, start a new one."""
        self.af.kill_triggerer()
        self.tally.faults["triggerer_sigkill"] += 1
        time.sleep(down)
        self.af.start_triggerer()

    def bounce_triggerer_while_running(self, runs: list[tuple[str, str]], timeout: float = 90.0) -> list[str]:
        """SIGKILL and restart the triggerer while these (dag id, run id) runs' jobs are RUNNING, keeping them
        RUNNING until the new triggerer has polled each of them (so the restarted triggers reattach to running
        jobs, however long the restart takes); then let them finish. Returns the jobs it pinned."""
        pinned = [j for j in self.proxy.running() if any(self.job_task(d, r, j) for d, r in runs)]
        self.proxy.pin(pinned)
        before = self.proxy.gets_of(pinned)
        self.bounce_triggerer()
        timeout *= WAIT_SLACK
        deadline = time.monotonic() + timeout
        try:
            while True:
                now = self.proxy.gets_of(pinned)
                if all(now[j] > before[j] for j in pinned):
                    return pinned
                if time.monotonic() > deadline:
                    raise AirflowStackError(f"the restarted triggerer did not poll {pinned} within {timeout}s "
                                            f"(gets before {before}, now {now})\n{self.af.process_logs()}")
                time.sleep(0.1)
        finally:
            self.proxy.release(pinned)

    def mark_failed(self, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        """What a user does in the UI: PATCH the task instance's state to failed (Airflow 3.3 REST API v2)."""
        self.tally.faults["marked_failed"] += 1
        return self._mark(dag_id, run_id, task_id, "failed")

    def mark_success(self, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        """What a user does in the UI: PATCH the task instance's state to success."""
        self.tally.faults["marked_success"] += 1
        return self._mark(dag_id, run_id, task_id, "success")

    def _mark(self, dag_id: str, run_id: str, task_id: str, state: str) -> list[dict[str, Any]]:
        path = f"/dags/{self.af._q(dag_id, 'dagRuns', run_id, 'taskInstances', task_id)}"
        return self.af.api("PATCH", path, {"new_state": state})["task_instances"]

    def clear_with_downstream(self, dag_id: str, run_id: str, task_id: str) -> set[str]:
        """What a user does in the UI: clear a task with its downstream tasks; the task ids Airflow cleared."""
        self.tally.faults["cleared"] += 1
        return {t["task_id"] for t in self.af.clear_task(dag_id, run_id, [task_id], include_downstream=True)}

    def job_regex(self, dag_id: str, run_id: str, tasks: list[str] | None = None) -> str:
        """A regex matching every job id of these tasks (default: the models) of this run, for scoped faults."""
        tasks = tasks if tasks is not None else [t for t in self.task_ids if t.startswith("model_")]
        return "|".join(f"{re.escape(job_id_base(dag_id, t, run_id))}_.*" for t in tasks)

    def add_http_faults(self, rules: list[tuple[str, str, int | str, int, bool]], job: str | None = None) -> None:
        """(method, path regex, status or 'reset', count, after_upstream) rules, for the jobs ``job`` matches (a
        regex; None: any request); counted when they fire."""
        for method, path, action, count, after in rules:
            self.proxy.add_fault(method, path, action, count, after_upstream=after, job=job)

    def count_fired(self, before: Counter[str]) -> Counter[str]:
        """HTTP faults the proxy fired since ``before`` (a :meth:`FaultProxy.fired` snapshot), added to the tally
        (job errors are counted by the tests that inject them, from the jobs that failed)."""
        delta = self.proxy.fired() - before
        del delta["job_error"]
        for action, n in delta.items():
            self.tally.faults[f"http_{action}"] += n
        return delta

    # ---- checks ------------------------------------------------------------------------------------------------

    def run_jobs_inserted(self, dag_id: str, run_id: str) -> list[str]:
        """The model jobs of this run the proxy has seen inserted so far."""
        inserts = self.proxy.stats()["inserts"]
        return [j for j, task in self.run_jobs(dag_id, run_id).items() if task.startswith("model_") and j in inserts]

    def check_run(self, dag_id: str, run_id: str) -> RunCheck:
        stats = self.proxy.stats()
        jobs = self.run_jobs(dag_id, run_id)
        check = RunCheck(dag_id, run_id, self.af.run_state(dag_id, run_id), self.states(dag_id, run_id),
                         {j: stats["inserts"][j] for j in jobs}, {j: n for j, n in stats["cancels"].items()
                                                                   if j in jobs or self.job_task(dag_id, run_id, j)},
                         jobs, self.proxy.failed_jobs() & set(jobs))
        check.order(self.proxy.timeline(), self.children)
        return check

    def count_reattached(self, dag_id: str, run_id: str) -> Counter[str]:
        """Jobs a restarted trigger found instead of submitting (``running``: still RUNNING, ``done``: already
        succeeded), from the task logs. A SIGKILLed triggerer's last log lines can be lost: a lower bound."""
        found: Counter[str] = Counter()
        for task in self.task_ids:
            with contextlib.suppress(AirflowStackError):
                text = self.af.task_log(dag_id, run_id, task)
                found["running"] += text.count("reattaching to BigQuery job")
                found["done"] += text.count("already succeeded; not running the SQL again")
        self.tally.reattached += sum(found.values())
        return found

    def foreign_jobs(self) -> dict[str, int]:
        """Jobs inserted through the proxy that no node task submitted (dbt's own queries during capture)."""
        return {j: n for j, n in self.proxy.stats()["inserts"].items() if not j.startswith("cosmos_async_")}

    def oracle_in_background(self) -> None:
        """Start the oracle's ``dbt build`` on a thread (e.g. while a run only waits on held jobs)."""
        if self._oracle_thread is None and self._oracle is None:
            self._oracle_thread = threading.Thread(target=self._build_oracle, name="fault-oracle", daemon=True)
            self._oracle_thread.start()

    def _build_oracle(self) -> None:
        try:
            self.oracle()
        except BaseException as exc:  # re-raised by oracle() in the test thread
            self._oracle_error = exc

    def oracle(self) -> dict[str, list[tuple]]:
        """The same project built by ``dbt build`` straight on the emulator (no proxy), once."""
        thread = self._oracle_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(300)
            self._oracle_thread = None
            if self._oracle_error is not None:
                raise self._oracle_error
        if self._oracle is None:
            started = time.monotonic()
            oracle_dir = self.root / "oracle"
            shutil.copytree(self.project_dir, oracle_dir, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("target", "logs"))
            with pytest.MonkeyPatch.context() as env:
                for name, value in (("BIGQUERY_API_ENDPOINT", self.bigquery_endpoint),
                                    ("BIGQUERY_DATASET", ORACLE_DATASET), ("BIGQUERY_PROJECT", PROJECT)):
                    env.setenv(name, value)
                dbt_build(oracle_dir)
            self._oracle = built_tables(self.client, ORACLE_DATASET)
            log(f"oracle dbt build: {len(self._oracle)} tables in {time.monotonic() - started:.1f}s")
        return self._oracle

    def wrong_tables(self, dataset: str, tasks: list[str] | None = None) -> list[str]:
        """Tables of ``dataset`` whose rows differ from the oracle's (all of them, or those of ``tasks``)."""
        oracle = self.oracle()
        actual = built_tables(self.client, dataset)
        names = sorted(oracle) if tasks is None else sorted(f".{t.rsplit('_', 1)[0]}" for t in tasks)
        wrong = [f"{dataset}{n}" for n in names if actual.get(n) != oracle.get(n)]
        self.tally.tables_checked += len(names)
        self.tally.wrong_tables += wrong
        return wrong


# ---- the long random tier ------------------------------------------------------------------------------------------

RANDOM_DAG = "fault_random"


def random_round(rig: FaultRig, rng: random.Random, n: int) -> list[str]:
    """One run with 0..3 triggerer kills at random moments (and sometimes transient HTTP faults); its problems."""
    run_id = f"random-{n}-{int(time.time())}"
    fired_before = rig.proxy.fired()
    kills = rng.randint(0, 3)
    if rng.random() < 0.4:
        status = rng.choice([429, 503, "reset"])
        path = rng.choice([INSERT_PATH, POLL_PATH])
        rig.add_http_faults([("POST" if path == INSERT_PATH else "GET", path, status, rng.randint(1, 3),
                              rng.random() < 0.3 and path == INSERT_PATH)])
    rig.trigger_once(RANDOM_DAG, run_id)
    started = time.monotonic()
    plan = []
    used: set[str] = set()
    for _ in range(kills):
        down = rng.uniform(0.0, 4.0)
        if rng.random() < 0.7:
            # A point while model jobs run (each kill after a job not seen at the previous one), plus a random bit.
            try:
                rig.wait_running_model_job(RANDOM_DAG, run_id, exclude=used, min_left=0.0, timeout=240)
            except AirflowStackError:
                break  # the run ended first
            used |= set(rig.run_jobs(RANDOM_DAG, run_id))
            delay = rng.uniform(0.0, rig.hold)
        else:
            delay = rng.uniform(0.0, 15.0)  # anywhere: setup, hooks, the seed, between tasks
        plan.append(f"+{delay:.1f}s/down {down:.1f}s")
        time.sleep(delay)
        if rig.af.run_state(RANDOM_DAG, run_id) in ("success", "failed"):
            break
        running = [j for j in rig.proxy.running() if rig.job_task(RANDOM_DAG, run_id, j)]
        log(f"  {run_id}: SIGKILL triggerer at +{time.monotonic() - started:.1f}s ({len(running)} job(s) "
            f"RUNNING), down {down:.1f}s")
        rig.bounce_triggerer(down)
    state = rig.af.wait_for_run(RANDOM_DAG, run_id, timeout=240)
    rig.count_fired(fired_before)
    check = rig.check_run(RANDOM_DAG, run_id)
    models_run = check.models_run()
    rig.tally.add_run(check, models_run=models_run)
    rig.count_reattached(RANDOM_DAG, run_id)
    problems = []
    if state != "success":
        problems.append(f"run {state}: {check.tasks}")
    if check.duplicates():
        problems.append(f"jobs run more than once: {check.duplicates()}")
    if check.cancels:
        problems.append(f"jobs cancelled: {check.cancels}")
    if sum(check.model_jobs().values()) != len(models_run):
        problems.append(f"{sum(check.model_jobs().values())} model jobs for {len(models_run)} models")
    wrong = rig.wrong_tables(RANDOM_DAG)
    if wrong:
        problems.append(f"wrong tables: {wrong}")
    log(f"round {n}: {state} in {time.monotonic() - started:.1f}s, kills {plan or 'none'}; "
        f"{problems or 'OK'}")
    return problems


def random_tier(rounds: int, seed: int, workdir: Path | None = None, hold: float = 6.0) -> int:
    """Start the emulator, token endpoint and rig, run ``rounds`` random rounds, print the tally; exit status."""
    import tempfile

    from tests.support.api_contract import LOG
    from tests.support.contract_front import ContractFront
    from tests.support.credentials import TokenEndpoint, service_account_key
    from tests.support.emulators import start_bigquery

    root = Path(workdir or tempfile.mkdtemp(prefix="cosmos-async-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    log(f"random tier: {rounds} rounds, seed {seed}, work dir {root}")
    rng = random.Random(seed)
    emulator = start_bigquery(root / "bqemulator")
    front = ContractFront(emulator.endpoint)  # as in the pytest session: every request checked
    tokens = TokenEndpoint()
    problems: dict[int, list[str]] = {}
    try:
        key = service_account_key(tokens.url)
        with FaultRig(root / "rig", front.url, key, [RANDOM_DAG], hold=hold,
                      pycache=root / "pycache") as rig:
            rig.oracle()
            for n in range(1, rounds + 1):
                try:
                    found = random_round(rig, rng, n)
                except AirflowStackError as exc:
                    found = [f"harness: {str(exc)[:2000]}"]
                if found:
                    problems[n] = found
            print(rig.tally.report(), flush=True)
            tally = rig.tally
    finally:
        tokens.stop()
        front.stop()
        emulator.stop()
    for n, found in problems.items():
        print(f"round {n} FAILED: {found}", flush=True)
    for violation in LOG.violations:
        print(f"Google API contract: {violation}", flush=True)
    ok = (not problems and tally.jobs_submitted == tally.models_run and not tally.wrong_tables
          and not LOG.violations)
    print("random tier:", "PASS" if ok else "FAIL", flush=True)
    return 0 if ok else 1
