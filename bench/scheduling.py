"""Issue 13: a dbt build with one Airflow task per node, side by side with plain dbt and astronomer-cosmos.

One Airflow stack (tests/support/airflow.py, LocalExecutor, parallelism 8) runs from the bench env
(bench/.venv-cosmos, where astronomer-cosmos is installed next to an editable cosmos-async), so ours and Cosmos
share the same scheduler, triggerer and workers. Every BigQuery job of every runner goes through the lifecycle
proxy (tests/support/bq_lifecycle_proxy.py) in front of the emulator, which names each job after its dbt node
(dbt's query comment, else the table the statement writes) and records when it was submitted and when it was
DONE. Two kinds of jobs:

* ``proxy``: each job is held RUNNING for its node's duration, the same for every runner (seeded lognormal);
* ``emulator``: no hold, jobs are DONE at insert (pure orchestration; the proxy's pass-through costs ~ms).

Figures per run: DAG-run wall time, T_exec (wall minus the setup task), worker slot-seconds (all tasks, and the
model/test tasks alone) and the gap from a node's last parent job DONE to the node's first job submitted.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import envs
from bench.synthetic import parse, write_project

ROOT = Path(__file__).resolve().parent.parent
SYNTHETIC_MODELS, SYNTHETIC_WIDTH = 200, 16  # 13 layers, each model reads one of the layer just before
THREADS = 8
MEDIAN_S, SIGMA, CAP_S, SEED = 3.0, 0.8, 30.0, 13
SETUP_TASK = "dbt_setup_async"
OUR_FRAME_TASKS = frozenset({SETUP_TASK, "dbt_teardown_async", "dbt_on_run_start", "dbt_on_run_end"})
RUNNERS = ("dbt build", "ours (scheduler-gated)", "ours (dependencies in the triggerer)", "cosmos WATCHER",
           "cosmos LOCAL")
DAG_PREFIX = {"ours (scheduler-gated)": "ours_gated", "ours (dependencies in the triggerer)": "ours_triggerer",
              "cosmos WATCHER": "cosmos_watcher", "cosmos LOCAL": "cosmos_local"}
OURS = ("ours (dependencies in the triggerer)", "ours (scheduler-gated)")

DAG_FILE = '''"""Benchmark DAGs of bench/scheduling.py (airflow DAG file): ours and astronomer-cosmos, per project."""
import json
from datetime import datetime
from pathlib import Path

import airflow  # noqa: F401  (before cosmos: its plugin module imports cosmos.constants circularly otherwise)
from cosmos import DbtDag as CosmosDag
from cosmos import ExecutionConfig as CosmosExecution
from cosmos import ExecutionMode as CosmosMode
from cosmos import LoadMode, RenderConfig, TestBehavior
from cosmos import ProfileConfig as CosmosProfile
from cosmos import ProjectConfig as CosmosProject

from cosmos_async import DbtDag, ExecutionConfig, ExecutionMode, GoogleCloudServiceAccountDictProfileMapping
from cosmos_async import ProfileConfig, ProjectConfig

SPEC = json.loads(Path(__file__).with_name("bench_scheduling.json").read_text())
common = dict(schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
for p in SPEC["projects"]:
    for key, parents in (("ours_gated", "scheduler"), ("ours_triggerer", "triggerer")):
        ours = DbtDag(
            dag_id=f"{key}_{p['key']}",
            project_config=ProjectConfig(dbt_project_path=p["path"], manifest_path=p["manifest"]),
            profile_config=ProfileConfig(profile_name=p["profile"], target_name="dev",
                                         profile_mapping=GoogleCloudServiceAccountDictProfileMapping(
                                             conn_id="gcp_conn", profile_args={"dataset": p["datasets"][key]})),
            execution_config=ExecutionConfig(execution_mode=ExecutionMode.AIRFLOW_ASYNC),
            operator_args={"location": "US", "poll_interval": SPEC["poll_interval"], "wait_for_parents": parents,
                           "max_concurrent_jobs": SPEC["threads"], "remote_target_path": SPEC["remote_target_path"]},
            **common)
        globals()[ours.dag_id] = ours
    for key, mode, behavior in (("cosmos_local", CosmosMode.LOCAL, TestBehavior.BUILD),
                                ("cosmos_watcher", CosmosMode.WATCHER, TestBehavior.AFTER_EACH)):
        dag = CosmosDag(
            dag_id=f"{key}_{p['key']}",
            project_config=CosmosProject(dbt_project_path=p["path"], manifest_path=p["manifest"]),
            profile_config=CosmosProfile(profile_name=p["profile"], target_name="dev",
                                         profiles_yml_filepath=p["profiles"][key]),
            execution_config=CosmosExecution(execution_mode=mode, dbt_executable_path=SPEC["dbt"]),
            render_config=RenderConfig(load_method=LoadMode.DBT_MANIFEST, test_behavior=behavior),
            operator_args={"install_deps": False}, **common)
        globals()[dag.dag_id] = dag
'''

NOTES = [
    "Both kinds of jobs go through the lifecycle proxy; 'emulator' = hold 0 (DONE at insert; the proxy adds a "
    "jobs.get per insert, a few ms). 'proxy' = each job held RUNNING for its node's duration: lognormal, median "
    f"{MEDIAN_S} s, sigma {SIGMA}, capped at {CAP_S} s, seeded by node id (seed {SEED}); tests get durations too. "
    "The hold applies per job: a node with two jobs (an incremental model's temp table + MERGE) is held twice, "
    "alike for every runner; seed loads (resumable uploads) are not held.",
    "T = the DAG run's start to end (API timestamps); T_exec = T minus the setup task (dbt_setup_async: dbt "
    "build with 1 thread against a recording endpoint + upload). dbt build's wall time includes its own parse.",
    "Gap = a node's first job submitted minus the latest DONE among the jobs it waits for in dbt build (its "
    "parents and their single-parent tests), from the proxy's clock. It includes waiting for a free slot: 8 "
    "threads / parallelism 8 / max_concurrent_jobs 8 against 16-wide layers, so dbt build has gaps too.",
    "Cosmos LOCAL runs TestBehavior.BUILD (one `dbt build --select <node>` per node, its fastest per-node form); "
    "Cosmos WATCHER its default (producer `dbt build`, threads 8 from the profile, deferrable consumers). "
    "Ours polls every 0.5 s (poll_interval).",
    "One timed run per (jobs, project, runner), no warm-up run; held jobs ran first (incremental models CREATE), "
    "instant jobs second (MERGE), in that order for every runner. The machine has 2 CPUs shared with other "
    "engineers' test stacks (load average 6-16 during the runs): every figure is an upper bound.",
]

PROFILE = """{profile}:
  target: dev
  outputs:
    dev:
      type: bigquery
      method: oauth-secrets
      token: anonymous
      project: demo-proj
      dataset: {dataset}
      api_endpoint: {endpoint}
      location: US
      threads: {threads}
"""


# ---- the same duration for the same node, whoever runs it ------------------------------------------------

def node_durations(manifest: dict[str, Any], seed: int = SEED, median: float = MEDIAN_S, sigma: float = SIGMA,
                   cap: float = CAP_S) -> dict[str, float]:
    """Seconds each model / snapshot / test job is held RUNNING: lognormal(median, sigma) capped, seeded per node
    id (so adding a node does not reshuffle the others)."""
    out = {}
    for node_id, node in manifest["nodes"].items():
        if node["resource_type"] in ("model", "snapshot", "test"):
            rng = random.Random(f"{seed}:{node_id}")
            out[node_id] = round(min(cap, rng.lognormvariate(math.log(median), sigma)), 2)
    return out


_NODE_COMMENT = re.compile(r'"node_id":\s*"([^"]+)"')
_WRITES = re.compile(r"\b(?:table|view|into)\s+((?:`[^`]+`\.?){1,3})", re.IGNORECASE)


class NodeClock:
    """The proxy's ``hold_for``: which dbt node a job belongs to, and how long it runs (0 when ``instant``)."""

    def __init__(self, durations: dict[str, float], tables: dict[str, str]) -> None:
        self.durations = durations
        self.tables = tables  # table name (lower case) -> node id, for statements without dbt's comment
        self.instant = True

    def node_of(self, sql: str) -> str | None:
        if m := _NODE_COMMENT.search(sql):
            return m[1]
        if m := _WRITES.search(sql):
            table = m[1].rsplit("`.`", 1)[-1].strip("`").lower().removesuffix("__dbt_tmp")
            return self.tables.get(table)
        return None

    def __call__(self, config: dict[str, Any]) -> tuple[str | None, float | None]:
        node = self.node_of((config.get("query") or {}).get("query", ""))
        return node, 0.0 if self.instant or node is None else self.durations.get(node, 0.0)


def waits_for(manifest: dict[str, Any]) -> dict[str, set[str]]:
    """What dbt build makes each model / snapshot wait for: its parent nodes and the tests on each parent alone."""
    tests_on: dict[str, set[str]] = {}
    for node_id, node in manifest["nodes"].items():
        parents = node.get("depends_on", {}).get("nodes", [])
        if node["resource_type"] == "test" and len(parents) == 1:
            tests_on.setdefault(parents[0], set()).add(node_id)
    out = {}
    for node_id, node in manifest["nodes"].items():
        if node["resource_type"] in ("model", "snapshot"):
            parents = set(node.get("depends_on", {}).get("nodes", []))
            out[node_id] = parents | {t for p in parents for t in tests_on.get(p, ())}
    return out


def gaps(timeline: list[dict[str, Any]], waits: dict[str, set[str]]) -> list[float]:
    """Per node with parent jobs: its first job's submit minus the latest DONE among the jobs it waits for."""
    first: dict[str, float] = {}
    done: dict[str, float] = {}
    for job in timeline:
        if job["name"]:
            first[job["name"]] = min(first.get(job["name"], math.inf), job["submitted"])
            done[job["name"]] = max(done.get(job["name"], 0.0), job["done"])
    out = []
    for node, submitted in first.items():
        ready = [done[w] for w in waits.get(node, ()) if w in done]
        if ready:
            out.append(round(submitted - max(ready), 3))
    return out


def _p95(values: list[float]) -> float | None:
    return round(statistics.quantiles(values, n=20)[-1], 3) if len(values) >= 2 else None


# ---- projects and runners ---------------------------------------------------------------------------------

@dataclass
class Project:
    key: str
    path: Path
    profile: str
    manifest: dict[str, Any]

    @property
    def manifest_path(self) -> Path:
        return self.path / "target" / "manifest.json"


def _projects(dags: Path) -> list[Project]:
    corner = dags / "dbt" / "corner_shop"
    parse(corner)
    synthetic = write_project(dags / "synthetic_200", SYNTHETIC_MODELS, width=SYNTHETIC_WIDTH, deep=True)
    parse(synthetic)
    return [Project(key, path, profile, json.loads((path / "target" / "manifest.json").read_text()))
            for key, path, profile in (("corner_shop", corner, "corner_shop"), ("synthetic_200", synthetic,
                                                                                  "synthetic"))]


def _tables(manifest: dict[str, Any]) -> dict[str, str]:
    return {(n.get("alias") or n["name"]).lower(): node_id for node_id, n in manifest["nodes"].items()
            if n["resource_type"] in ("model", "snapshot", "seed")}


def _dataset(project: Project, runner: str) -> str:
    return f"{project.key}_{runner}"


def _profiles(workdir: Path, project: Project, runner: str, endpoint: str) -> Path:
    """A profiles.yml of its own per runner: Cosmos reads a file, and each runner builds into its own dataset."""
    path = workdir / "profiles" / f"{project.key}_{runner}" / "profiles.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PROFILE.format(profile=project.profile, dataset=_dataset(project, runner), endpoint=endpoint,
                                   threads=THREADS))
    return path


def dbt_build(workdir: Path, project: Project, endpoint: str) -> dict[str, Any]:
    """Plain ``dbt build --threads 8`` in one process (the oracle's way); wall time includes dbt's own parse."""
    profiles = _profiles(workdir, project, "dbt_build", endpoint).parent
    target = workdir / "dbt_target" / project.key
    shutil.rmtree(target, ignore_errors=True)
    t0 = time.perf_counter()
    out = subprocess.run([str(Path(sys.executable).with_name("dbt")), "build", "--threads", str(THREADS),
                          "--project-dir", str(project.path), "--profiles-dir", str(profiles), "--target-path",
                          str(target), "--log-path", str(target), "--quiet"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}, timeout=1800)
    wall = round(time.perf_counter() - t0, 2)
    row: dict[str, Any] = {"wall_s": wall, "state": "success" if out.returncode == 0 else "failed"}
    if out.returncode:
        row["error"] = (out.stdout + out.stderr)[-1500:]
    return row


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def dag_run(af: Any, dag_id: str, timeout: float, keep: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Trigger one run and measure it from the API's run / task-instance timestamps and the worker log; the task
    instances are appended to ``keep``."""
    run_id = af.trigger(dag_id)
    state = af.wait_for_run(dag_id, run_id, timeout=timeout, poll=1.0)
    run = af.api("GET", f"/dags/{af._q(dag_id, 'dagRuns', run_id)}") or {}
    start, end = _ts(run.get("start_date")), _ts(run.get("end_date"))
    wall = round((end - start).total_seconds(), 2) if start and end else None
    tis = {t["task_id"]: t for t in af.task_instances(dag_id, run_id)}
    if keep is not None:
        keep.extend(tis.values())
    setup = tis.get(SETUP_TASK, {})
    s0, s1 = _ts(setup.get("start_date")), _ts(setup.get("end_date"))
    setup_s = round((s1 - s0).total_seconds(), 2) if s0 and s1 else None
    slots = af.worker_seconds(dag_id, run_id, settle=6.0)
    failed = sorted(t for t, ti in tis.items() if ti.get("state") not in ("success", "skipped"))
    return {"state": state, "wall_s": wall, "setup_s": setup_s,
            "exec_s": round(wall - setup_s, 2) if wall is not None and setup_s is not None else None,
            "worker_s": round(sum(slots.values()), 2), "tasks": len(tis),
            "node_tasks_worker_s": round(sum(s for t, s in slots.items() if t not in OUR_FRAME_TASKS), 2),
            "tasks_on_worker": sum(1 for s in slots.values() if s > 0), **({"not_success": failed[:10]} if failed
                                                                              else {})}


def run(workdir: Path, kinds: tuple[str, ...] = ("proxy", "emulator"), runners: tuple[str, ...] = RUNNERS,
        budget_s: float = 2000.0, run_timeout_s: float = 1500.0,
        projects_wanted: tuple[str, ...] = (), triggerer_capacity: int | None = None) -> list[dict[str, Any]]:
    """Every runner on both projects (or ``projects_wanted``) for each kind of jobs; a run that would start after
    ``budget_s`` is recorded as skipped, not dropped. Rows: one per (kind, project, runner), in the order they ran.
    ``triggerer_capacity``: the stack's ``[triggerer] capacity`` (None: Airflow's default, 1000).
    Each run's job timeline and task instances go to ``workdir/timelines`` (kept after the bench, for diagnosis)."""
    sys.path.insert(0, str(ROOT))
    from tests.support.airflow import AirflowStack
    from tests.support.bq_lifecycle_proxy import LifecycleProxy
    from tests.support.credentials import TokenEndpoint, service_account_key
    from tests.support.emulators import start_bigquery

    started = time.monotonic()
    if workdir.exists():
        shutil.rmtree(workdir)
    dags = workdir / "dags"
    shutil.copytree(ROOT / "dev" / "dags" / "dbt" / "corner_shop", dags / "dbt" / "corner_shop",
                    ignore=shutil.ignore_patterns("target", "logs"))
    projects = _projects(dags)
    clocks = {p.key: NodeClock(node_durations(p.manifest), _tables(p.manifest)) for p in projects}
    current = {"clock": clocks[projects[0].key]}
    bq, tokens = start_bigquery(workdir / "bq"), TokenEndpoint()
    proxy = LifecycleProxy(bq.endpoint, hold_for=lambda config: current["clock"](config)).start()
    rows: list[dict[str, Any]] = []
    spec = {"poll_interval": 0.5, "threads": THREADS, "remote_target_path": f"file://{workdir / 'remote'}",
            "dbt": str(envs.VENV / "bin" / "dbt"), "projects": [
                {"key": p.key, "path": str(p.path), "manifest": str(p.manifest_path), "profile": p.profile,
                 "datasets": {k: _dataset(p, k) for k in ("ours_gated", "ours_triggerer")},
                 "profiles": {k: str(_profiles(workdir, p, k, proxy.url)) for k in ("cosmos_local",
                                                                                     "cosmos_watcher")}}
                for p in projects]}
    (dags / "bench_scheduling.json").write_text(json.dumps(spec, indent=2))
    (dags / "bench_scheduling.py").write_text(DAG_FILE)
    conn = {"conn_type": "google_cloud_platform",
            "extra": {"project": "demo-proj", "keyfile_dict": json.dumps(service_account_key(tokens.url)),
                      "bigquery_api_endpoint": proxy.url}}
    # Cosmos's telemetry would call out of 127.0.0.1 on every task.
    env = {"AIRFLOW_CONN_GCP_CONN": json.dumps(conn), "PYTHONPATH": envs.PYTHONPATH,
           "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False", "DO_NOT_TRACK": "1"}
    if triggerer_capacity:
        env["AIRFLOW__TRIGGERER__CAPACITY"] = str(triggerer_capacity)
    try:
        with AirflowStack(workdir / "airflow", dags, env=env, parallelism=8, bin_dir=envs.VENV / "bin") as af:
            for p in projects:
                for prefix in DAG_PREFIX.values():
                    af.wait_for_dag(f"{prefix}_{p.key}", timeout=600)
            # Within the time budget: Cosmos LOCAL on the large project (it costs more than everything else
            # together) goes last, and the scheduler-gated mode (today's, measured before) after the rest.
            plan = sorted(((k, p, r) for k in kinds for p in projects for r in runners
                           if not projects_wanted or p.key in projects_wanted),
                          key=lambda x: (x[2] == "cosmos LOCAL" and x[1].key == "synthetic_200",
                                         x[2] == "ours (scheduler-gated)"))
            for kind, p, runner in plan:
                row: dict[str, Any] = {"kind": kind, "project": p.key, "runner": runner}
                rows.append(row)
                left = budget_s - (time.monotonic() - started)
                if left <= 0:
                    row["error"] = f"not run: past the bench's time budget of {budget_s:.0f} s"
                    continue
                print(f"-- {kind} {p.key} {runner}", flush=True)
                clock = current["clock"] = clocks[p.key]
                clock.instant = kind == "emulator"
                proxy.reset()
                tis: list[dict[str, Any]] = []
                try:
                    if runner == "dbt build":
                        row.update(dbt_build(workdir, p, proxy.url))
                    else:
                        row.update(dag_run(af, f"{DAG_PREFIX[runner]}_{p.key}", min(run_timeout_s, left + 300),
                                           tis))
                except Exception as exc:
                    row["error"] = f"{type(exc).__name__}: {exc}"[-1500:]
                timeline = proxy.job_log()
                kept = workdir / "timelines" / f"{kind}_{p.key}_{DAG_PREFIX.get(runner, 'dbt_build')}.json"
                kept.parent.mkdir(parents=True, exist_ok=True)
                kept.write_text(json.dumps({"jobs": timeline, "task_instances": tis}, indent=1, default=str))
                node_gaps = gaps(timeline, waits_for(p.manifest))
                row.update({"jobs": len(timeline), "jobs_unnamed": sum(1 for j in timeline if not j["name"]),
                            "held_s": round(sum(j["hold"] for j in timeline), 1),
                            "median_gap_s": round(statistics.median(node_gaps), 3) if node_gaps else None,
                            "p95_gap_s": _p95(node_gaps), "gaps": len(node_gaps)})
                print(f"   {json.dumps({k: v for k, v in row.items() if k != 'error'})}", flush=True)
    finally:
        proxy.stop()
        tokens.stop()
        bq.stop()
    return rows


# ---- targets (issue 13) -----------------------------------------------------------------------------------

def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets beside the figures, each with the measured values and PASS / MISS / n/a."""
    by = {(r["kind"], r["project"], r["runner"]): r for r in rows}
    out = []

    def value(kind: str, project: str, runner: str, key: str) -> float | None:
        r = by.get((kind, project, runner), {})
        return None if "error" in r or r.get("state") != "success" else r.get(key)

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else "PASS" if ok else "MISS"

    pairs = sorted({(r["project"], r["runner"]) for r in rows if r["runner"] in OURS})
    for project, ours in pairs:
        tag = f"{project}, {ours}"
        dbt_p, exec_p = value("proxy", project, "dbt build", "wall_s"), value("proxy", project, ours, "exec_s")
        wall_p = value("proxy", project, ours, "wall_s")
        ratio = round(exec_p / dbt_p, 2) if exec_p and dbt_p else None
        out.append(f"{tag}, held jobs: T_exec <= 1.05x dbt build — {exec_p} s vs {dbt_p} s = {ratio}x: "
                   f"{verdict(None if ratio is None else ratio <= 1.05)}")
        for cosmos in ("cosmos WATCHER", "cosmos LOCAL"):
            other = value("proxy", project, cosmos, "wall_s")
            out.append(f"{tag}, held jobs: T_ours ahead of {cosmos} — {wall_p} s vs {other} s: "
                       f"{verdict(None if wall_p is None or other is None else wall_p < other)}")
        dbt_e, exec_e = value("emulator", project, "dbt build", "wall_s"), value("emulator", project, ours, "exec_s")
        ratio = round(exec_e / dbt_e, 2) if exec_e and dbt_e else None
        out.append(f"{tag}, instant jobs: T_exec <= 1.5x dbt build — {exec_e} s vs {dbt_e} s = {ratio}x: "
                   f"{verdict(None if ratio is None else ratio <= 1.5)}")
        gap = value("emulator", project, ours, "median_gap_s")
        out.append(f"{tag}, instant jobs: median gap <= 0.3 s — {gap} s: "
                   f"{verdict(None if gap is None else gap <= 0.3)}")
        slots = [value(k, project, ours, "node_tasks_worker_s") for k in ("emulator", "proxy")]
        known = [s for s in slots if s is not None]
        out.append(f"{project}, {ours}: model tasks 0 worker slot-s — {slots} (instant, held): "
                   f"{verdict(None if not known else all(s == 0 for s in known))}")
    return out
