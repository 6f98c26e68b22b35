"""Figures 4-5 on real Airflow processes (tests/support/airflow.py: AirflowStack, LocalExecutor, SQLite).

4. Worker slot-seconds per model on the example DAG (dev/dags/corner_shop.py): ours with start-in-triggerer
   (the DAG as shipped) and ours on the worker path (``start_from_trigger=False``), via AirflowStack.worker_seconds.
5. Wall time of one DAG run of a 100-model synthetic project (AIRFLOW_ASYNC, tests after each model) vs
   ``dbt build --threads 8`` of the same project, both on the BigQuery emulator (jobs finish at insert, so this
   is orchestration overhead), plus the median scheduling gap: a task's start minus its last upstream's end, from
   the task instances' timestamps (the emulator's job timestamps are not BigQuery's, so they are not used).
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import envs
from bench.synthetic import parse, write_project

ROOT = Path(__file__).resolve().parent.parent
MODELS = 100

VARIANTS = '''"""Benchmark DAGs (airflow DAG file)."""
from datetime import datetime
from pathlib import Path

from corner_shop import profile_config, project_config
from cosmos_async import DbtDag, ExecutionConfig, ExecutionMode, ProfileConfig, ProjectConfig
from cosmos_async import GoogleCloudServiceAccountDictProfileMapping

SYNTHETIC = Path(__file__).parent / "synthetic_project"
common = dict(schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
              execution_config=ExecutionConfig(execution_mode=ExecutionMode.AIRFLOW_ASYNC))
corner_shop_worker = DbtDag(dag_id="corner_shop_worker", project_config=project_config,
                            profile_config=profile_config, operator_args={"start_from_trigger": False}, **common)
synthetic_async = DbtDag(
    dag_id="synthetic_async",
    project_config=ProjectConfig(dbt_project_path=SYNTHETIC, manifest_path=SYNTHETIC / "target" / "manifest.json"),
    profile_config=ProfileConfig(profile_name="synthetic", target_name="dev",
                                 profile_mapping=GoogleCloudServiceAccountDictProfileMapping(
                                     conn_id="gcp_conn", profile_args={"dataset": "synthetic_af"})),
    operator_args={"location": "US"}, **common)
'''


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def scheduling_gaps(af: Any, dag_id: str, run_id: str) -> list[float]:
    """Per task with upstreams: its start minus the latest end among its upstream tasks (seconds)."""
    tasks = (af.api("GET", f"/dags/{af._q(dag_id)}/tasks") or {}).get("tasks", [])
    upstream: dict[str, list[str]] = {}
    for task in tasks:
        for down in task.get("downstream_task_ids", []):
            upstream.setdefault(down, []).append(task["task_id"])
    tis = {t["task_id"]: t for t in af.task_instances(dag_id, run_id)}
    gaps = []
    for task_id, ups in upstream.items():
        start = _ts(tis.get(task_id, {}).get("start_date"))
        ends = [_ts(tis[u].get("end_date")) for u in ups if u in tis]
        if start and ends and all(ends):
            gaps.append((start - max(ends)).total_seconds())  # type: ignore[type-var]
    return gaps


def one_run(af: Any, dag_id: str, models: int, figure: str, variant: str) -> dict[str, Any]:
    run_id = af.trigger(dag_id)
    state = af.wait_for_run(dag_id, run_id, timeout=1200)
    run = af.api("GET", f"/dags/{af._q(dag_id, 'dagRuns', run_id)}") or {}
    start, end = _ts(run.get("start_date")), _ts(run.get("end_date"))
    slots = af.worker_seconds(dag_id, run_id, settle=10.0)
    gaps = scheduling_gaps(af, dag_id, run_id)
    worker = round(sum(slots.values()), 2)
    return {"figure": figure, "variant": variant, "dag": dag_id, "runs": 1, "state": state,
            "wall_s": round((end - start).total_seconds(), 2) if start and end else None,
            "worker_s": worker, "worker_s_per_model": round(worker / models, 3), "tasks": len(slots),
            "tasks_on_worker": sum(1 for s in slots.values() if s > 0),
            "median_gap_s": round(statistics.median(gaps), 3) if gaps else None}


def dbt_build(project: Path, endpoint: str, runs: int) -> dict[str, Any]:
    dbt = Path(sys.executable).with_name("dbt")
    env = {"PATH": "/usr/bin:/bin", "BIGQUERY_API_ENDPOINT": endpoint, "BIGQUERY_DATASET": "synthetic_dbt",
           "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    samples = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as target:
            t0 = time.perf_counter()
            out = subprocess.run([str(dbt), "build", "--threads", "8", "--project-dir", str(project),
                                  "--profiles-dir", str(project), "--target-path", target, "--log-path", target,
                                  "--quiet"], capture_output=True, text=True, env=env, timeout=1200)
            samples.append(time.perf_counter() - t0)
        if out.returncode:
            return {"figure": "5", "variant": "dbt build --threads 8", "dag": "-",
                    "error": (out.stdout + out.stderr)[-1500:]}
    return {"figure": "5", "variant": "dbt build --threads 8 (one process)", "dag": "-", "runs": runs,
            "wall_s": round(statistics.median(samples), 2), "samples_s": [round(s, 2) for s in samples],
            "state": "success"}


def run(tier: str, workdir: Path) -> list[dict[str, Any]]:
    sys.path.insert(0, str(ROOT))
    from tests.support.airflow import AirflowStack
    from tests.support.credentials import TokenEndpoint, service_account_key
    from tests.support.emulators import start_bigquery, start_gcs

    if workdir.exists():
        shutil.rmtree(workdir)
    dags = workdir / "dags"
    shutil.copytree(ROOT / "dev" / "dags", dags, ignore=shutil.ignore_patterns("__pycache__", "target", "logs"))
    project = write_project(dags / "synthetic_project", MODELS)
    parse(project)
    (dags / "bench_variants.py").write_text(VARIANTS)
    bq, gcs, tokens = start_bigquery(workdir / "bq"), start_gcs(workdir / "gcs"), TokenEndpoint()
    rows: list[dict[str, Any]] = []
    try:
        conn = {"conn_type": "google_cloud_platform",
                "extra": {"project": "demo-proj", "keyfile_dict": json.dumps(service_account_key(tokens.url)),
                          "bigquery_api_endpoint": bq.endpoint, "storage_api_endpoint": gcs.endpoint}}
        env = {"AIRFLOW_CONN_GCP_CONN": json.dumps(conn), "CORNER_SHOP_DATASET": "corner_shop_bench",
               "AIRFLOW__COSMOS__REMOTE_TARGET_PATH": f"gs://{gcs.extra['bucket']}/runs",
               "AIRFLOW__COSMOS__REMOTE_TARGET_PATH_CONN_ID": "gcp_conn", "AIRFLOW__COSMOS__POLL_INTERVAL": "0.5",
               "PYTHONPATH": envs.PYTHONPATH}
        rows.append(dbt_build(project, bq.endpoint, 3 if tier == "full" else 1))
        with AirflowStack(workdir / "airflow", dags, env=env, parallelism=8) as af:
            for dag_id in ("corner_shop", "corner_shop_worker", "synthetic_async"):
                af.wait_for_dag(dag_id, timeout=300)
            corner_models = sum(1 for p in (ROOT / "dev/dags/dbt/corner_shop/models").rglob("*.sql"))
            for dag_id, variant in (("corner_shop", "ours, start in triggerer"),
                                    ("corner_shop_worker", "ours, worker path (start_from_trigger=False)")):
                af.wait_for_run(dag_id, af.trigger(dag_id), timeout=600)  # untimed warm-up: datasets, .pyc
                rows.append(_guard(lambda d=dag_id, v=variant: one_run(af, d, corner_models, "4", v),
                                   "4", variant, dag_id))
            rows.append(_guard(lambda: one_run(af, "synthetic_async", MODELS, "5", "ours AIRFLOW_ASYNC"),
                               "5", "ours AIRFLOW_ASYNC", "synthetic_async"))
    finally:
        tokens.stop()
        gcs.stop()
        bq.stop()
    rows.append({"figure": "4", "variant": "Cosmos AIRFLOW_ASYNC", "dag": "-",
                 "error": "not run: Cosmos's async operator inserts through providers-google's BigQuery hook, "
                          "which has no endpoint setting for the emulator in a real Airflow stack; not attempted "
                          "in the time box"})
    return rows


def _guard(fn: Any, figure: str, variant: str, dag_id: str) -> dict[str, Any]:
    try:
        return fn()
    except Exception as exc:
        return {"figure": figure, "variant": variant, "dag": dag_id, "error": f"{type(exc).__name__}: {exc}"[-1500:]}
