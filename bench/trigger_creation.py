"""What Airflow's triggerer pays to create one start-from-trigger task's trigger, and to keep it while it waits.

Airflow 3.3 hands every start-from-trigger workload the DAG's whole serialized form (``dag_data``), and the
trigger runner deserializes all of it, in its event loop, to find the one task it starts
(``TriggerRunner.create_runtime_ti``: ``DagSerialization.from_dict(dag_data).get_task(task_id)``); the task, and
through it that DAG copy, stays referenced by the trigger until it fires. So a DAG run whose N tasks all start in
the triggerer costs N full deserializations (N² operators) of loop time, and holds N DAG copies at once when they
all wait together, as they do with ``wait_for_parents="triggerer"``.

Each size runs in a fresh interpreter: our DbtDag of a synthetic project (AIRFLOW_ASYNC, waiting in the
triggerer, a test task per model), serialized as the dag-processor stores it; then, timed, what the trigger runner
does per trigger (a JSON round trip of ``dag_data`` standing in for the supervisor's message, ``from_dict``,
``get_task``), keeping each task so that the RSS growth per kept task is what one waiting trigger holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from bench.synthetic import parse, write_project

PROBE = textwrap.dedent('''
    import gc, json, os, resource, sys, time
    from datetime import datetime
    from airflow.serialization.serialized_objects import DagSerialization
    from cosmos_async import DbtDag, ExecutionConfig, ExecutionMode, ProfileConfig, ProjectConfig
    project, manifest, profiles, samples = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    dag = DbtDag(dag_id="bench_creation", schedule=None, start_date=datetime(2026, 1, 1),
                 project_config=ProjectConfig(dbt_project_path=project, manifest_path=manifest),
                 profile_config=ProfileConfig(profile_name="synthetic", target_name="dev",
                                              profiles_yml_filepath=profiles),
                 execution_config=ExecutionConfig(execution_mode=ExecutionMode.AIRFLOW_ASYNC),
                 operator_args={"gcp_conn_id": "bench_gcp", "wait_for_parents": "triggerer"})
    payload = json.dumps(DagSerialization.to_dict(dag))
    starting = [t.task_id for t in dag.tasks if t.start_from_trigger]
    del dag
    gc.collect()

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    kept, times = [], []
    before = rss_mb()
    for i in range(samples):
        t0 = time.perf_counter()
        task = DagSerialization.from_dict(json.loads(payload)).get_task(starting[i % len(starting)])
        times.append(time.perf_counter() - t0)
        kept.append(task)
    gc.collect()
    grown = rss_mb() - before
    print(json.dumps({"tasks": len(json.loads(payload)["dag"]["tasks"]), "starting_in_triggerer": len(starting),
                      "serialized_kb": round(len(payload) / 1024), "samples": samples,
                      "per_trigger_s": round(sorted(times)[len(times) // 2], 4), "best_s": round(min(times), 4),
                      "rss_mb_per_waiting_trigger": round(grown / samples, 2)}))
''')


def run(sizes: list[int], samples: int, workdir: Path) -> list[dict]:
    """One row per project size: the trigger runner's cost per trigger, and per DAG run."""
    rows = []
    for n in sizes:
        root = workdir / f"p{n}"
        project = write_project(root, n, deep=True)
        manifest = parse(project)
        env = {**os.environ, "AIRFLOW__COSMOS__REMOTE_TARGET_PATH": f"file://{workdir / 'remote'}"}
        proc = subprocess.run([sys.executable, "-c", PROBE, str(project), str(manifest),
                               str(project / "profiles.yml"), str(samples)],
                              capture_output=True, text=True, env=env, timeout=3600)
        if proc.returncode != 0:
            rows.append({"models": n, "error": proc.stderr[-2000:]})
            continue
        row = {"models": n, **json.loads(proc.stdout.strip().splitlines()[-1])}
        starting = row["starting_in_triggerer"]
        row["per_run_loop_s"] = round(row["per_trigger_s"] * starting, 1)
        row["all_waiting_rss_gb"] = round(row["rss_mb_per_waiting_trigger"] * starting / 1024, 2)
        rows.append(row)
    return rows
