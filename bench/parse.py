"""DAG-file import time: a DbtDag over a manifest vs the floor (the same task graph of EmptyOperators).

Each figure is the median of several fresh interpreters. Airflow itself is imported before the clock starts in
both, so the figures compare what the DAG file costs. Writes bench/results/parse-<date>.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

from bench.results import write_results
from bench.synthetic import parse, write_project

OURS = """
from cosmos_async import DbtDag, ExecutionConfig, ExecutionMode, ProfileConfig, ProjectConfig, RenderConfig
from cosmos_async import TestBehavior
dag = DbtDag(
    dag_id="ours", schedule=None,
    project_config=ProjectConfig(manifest_path={manifest!r}, dbt_project_path={project!r}),
    profile_config=ProfileConfig(profile_name="synthetic", target_name="dev",
                                 profiles_yml_filepath={profiles!r}),
    execution_config=ExecutionConfig(execution_mode=ExecutionMode.{mode}),
    render_config=RenderConfig(test_behavior=TestBehavior.{tests}),
)
"""

FLOOR = """
from airflow.sdk import DAG, TaskGroup
from airflow.providers.standard.operators.empty import EmptyOperator
PLANS = {plans!r}
with DAG(dag_id="floor", schedule=None) as dag:
    tasks, groups = {{}}, {{}}
    for key, task_id, group_id, upstream in PLANS:
        if group_id is None:
            tasks[key] = EmptyOperator(task_id=task_id)
        else:
            if group_id not in groups:
                groups[group_id] = TaskGroup(group_id=group_id)
            with groups[group_id]:
                tasks[key] = EmptyOperator(task_id=task_id)
        for up in upstream:
            tasks[up] >> tasks[key]
"""

PROBE = """
import sys, time, runpy
import airflow.sdk  # noqa: F401  (excluded from the measurement in both files)
from airflow.providers.standard.operators.empty import EmptyOperator  # noqa: F401
t0 = time.perf_counter()
ns = runpy.run_path(sys.argv[1])
elapsed = time.perf_counter() - t0
import resource
heavy = sorted(m for m in ("dbt", "google.cloud.bigquery", "gcsfs") if m in sys.modules)
print(elapsed, len(ns["dag"].task_dict), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, ",".join(heavy))
"""


def floor_plans(manifest: Path, tests: str) -> list[tuple]:
    from cosmos_async.config import TestBehavior
    from cosmos_async.plan import plan_tasks
    from cosmos_async.project.manifest import load_manifest
    from cosmos_async.project.select import select_nodes

    graph = load_manifest(manifest)
    plans = plan_tasks(graph, select_nodes(graph, [], []), TestBehavior[tests])
    return [(p.key, p.task_id, p.group_id, p.upstream) for p in plans]


def measure(dag_file: Path, runs: int) -> dict:
    samples, rss = [], []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", PROBE, str(dag_file)], capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"{dag_file.name} failed:\n{out.stderr[-3000:]}")
        elapsed, tasks, maxrss, heavy = [*out.stdout.strip().split(" "), ""][:4]
        samples.append(float(elapsed))
        rss.append(int(maxrss))
    return {"median_s": statistics.median(samples), "samples_s": samples, "tasks": int(tasks),
            "peak_rss_mb": round(statistics.median(rss) / 1024, 1), "heavy_imports": heavy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, nargs="+", default=[1000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tests", default="NONE", choices=["NONE", "AFTER_EACH", "AFTER_ALL"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cosmos-async-bench"))
    args = parser.parse_args()
    rows = []
    for n in args.models:
        project = write_project(args.workdir / f"project_{n}", n)
        manifest = parse(project)
        ours = args.workdir / f"ours_{n}.py"
        ours.write_text(textwrap.dedent(OURS.format(manifest=str(manifest), project=str(project),
                                                    profiles=str(project / "profiles.yml"), mode="LOCAL",
                                                    tests=args.tests)))
        floor = args.workdir / f"floor_{n}.py"
        floor.write_text(FLOOR.format(plans=floor_plans(manifest, args.tests)))
        row = {"models": n, "tests": args.tests, "floor": measure(floor, args.runs),
               "cosmos_async": measure(ours, args.runs)}
        row["ratio_vs_floor"] = round(row["cosmos_async"]["median_s"] / row["floor"]["median_s"], 2)
        rows.append(row)
        print(f"{n:>6} models  floor {row['floor']['median_s']:.3f}s  cosmos-async "
              f"{row['cosmos_async']['median_s']:.3f}s  ratio {row['ratio_vs_floor']}x  "
              f"tasks {row['cosmos_async']['tasks']}  heavy imports: {row['cosmos_async']['heavy_imports'] or 'none'}")
    print("results:", write_results("parse", rows))


if __name__ == "__main__":
    main()
