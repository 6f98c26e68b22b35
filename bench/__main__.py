"""Benchmarks side by side with astronomer-cosmos and dbt: ``python -m bench quick|full|scheduling``.

quick: minutes, small sizes, few repeats (a CI smoke test: it never fails on timing, only when a benchmark
cannot run at all). full: every size. scheduling: issue 13, a dbt build with one task per node vs plain
dbt and Cosmos LOCAL / WATCHER on one Airflow stack (bench/scheduling.py; an hour on 2 shared cores, not in CI).
Each writes bench/results/<date>-<machine>.json and .md (and a .png chart
when matplotlib is available in the bench env). A section that cannot run is recorded, not dropped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import envs, parse, report, scheduling, setup_time, trigger_creation, triggerer
from bench.results import RESULTS, environment, machine, stem

WORKDIR = Path("/tmp/cosmos-async-bench")
RUNNERS = scheduling.RUNNERS  # the scheduling tier's runners, in order (--runners narrows them)
BUDGET_S = 2000.0  # the scheduling tier starts no run after this many seconds (--budget)
KINDS: tuple[str, ...] = ("proxy", "emulator")  # the scheduling tier's kinds of jobs (--kinds narrows them)
PROJECTS: tuple[str, ...] = ()  # the scheduling tier's projects (--projects narrows them; empty: all)
CAPACITY: int | None = None  # the scheduling tier's [triggerer] capacity (--triggerer-capacity; None: Airflow's)

NOTES = [
    "Parse: fresh interpreter per sample; one untimed warm-up run per DAG file compiles the libraries' .pyc "
    "(PYTHONDONTWRITEBYTECODE unset); the DAG file itself is compiled on every sample, as the dag-processor does. "
    "Peak RSS is the whole probe process (Airflow SDK included).",
    "Parse without a manifest: 'ours_dbt_ls_cold' empties our cache dir before every sample; 'cosmos_dbt_ls' runs "
    "with AIRFLOW__COSMOS__ENABLE_CACHE_DBT_LS=False because Cosmos keeps that cache in Airflow Variables (the "
    "metadata DB), which a standalone parse has not got.",
    "Setup: ours = capture_project + upload_capture in a fresh process (dbt build with 1 thread against a "
    "recording endpoint, statements of models, seeds and tests; 'fallbacks' = nodes left to dbt on a worker); "
    "plain dbt compile renders SQL only, 8 threads. Both do a full parse (no partial parse). Cosmos's own "
    "SetupAsyncOperator was not timed.",
    "Triggerer: the lifecycle proxy (tests/support/bq_lifecycle_proxy.py) is used as a latency server that "
    "holds each job RUNNING for the stated hold; it runs in its own process on the same 2-CPU machine, so at "
    "large N it and the emulator compete with the measured process for CPU (wall/hold then includes their "
    "queueing). Ours includes reading the index + script from file:// and the insert; Google's trigger only "
    "waits (its operator inserts on a worker). Each uses its default poll interval. RSS per 1000 at N=100 "
    "is dominated by one-time costs (lazy imports, the HTTP session), so read the largest N.",
    "Trigger creation (3b): bench/trigger_creation.py, a fresh interpreter per size; 'per trigger' is what "
    "Airflow 3.3's trigger runner does in its event loop for each start-from-trigger workload (the whole "
    "serialized DAG through JSON, DagSerialization.from_dict, get_task), median of the samples; 'loop time per "
    "DAG run' multiplies it by the tasks that start in the triggerer; 'RSS per waiting trigger' is the growth per "
    "kept task (each keeps its own DAG copy), 'all waiting at once' multiplies it by the same count.",
    "Figures 4-5: one timed run per DAG after one untimed warm-up run (slow on this machine: say so when "
    "quoting). The BigQuery emulator finishes every job at insert, so the Airflow figures are orchestration "
    "overhead, not warehouse time. 'median scheduling gap' = a task's start minus its last upstream's end "
    "(task-instance timestamps; the emulator's job timestamps are not BigQuery's). A corner_shop run that "
    "reads 'failed' failed in its snapshot task only when the snapshot already existed in the dataset (the "
    "captured MERGE had an empty column list, `INSERT () VALUES ()`); the other tasks' slot-seconds count.",
    "Not measured: Cosmos AIRFLOW_ASYNC on a real Airflow stack (figures 4-5) and Cosmos's own setup task; "
    "BigQuery itself (no credentials here).",
]


def _section(doc: dict, key: str, fn: Callable[[], Any]) -> None:
    """Run one section (rows append under ``key``); write the results files after it, so a run cut short keeps
    what it measured."""
    print(f"== {key}", flush=True)
    try:
        doc["sections"].setdefault(key, []).extend(fn())
    except Exception as exc:
        traceback.print_exc()
        doc["section_errors"][key] = f"{type(exc).__name__}: {exc}"[-600:]
    doc["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    write(doc)


# (section, what it runs); a section may appear twice (the slowest sizes last).
TIERS: dict[str, list[tuple[str, Callable[[], list]]]] = {
    "quick": [
        ("parse", lambda: parse.run([10], 1, WORKDIR / "parse")),
        ("setup", lambda: setup_time.run([10], 1, WORKDIR / "setup", warmup=False, variants=setup_time.DEFAULT)),
        ("triggerer", lambda: triggerer.run([100], 3.0, WORKDIR / "triggerer", [100])),
        ("trigger_creation", lambda: trigger_creation.run([10], 3, WORKDIR / "trigger_creation")),
    ],
    "full": [
        ("parse", lambda: parse.run([10, 100, 1000], 5, WORKDIR / "parse", dbt_ls_models=[100], dbt_ls_runs=3)),
        ("setup", lambda: setup_time.run([10, 100], 3, WORKDIR / "setup", variants=setup_time.DEFAULT)),
        ("triggerer", lambda: triggerer.run([100, 1000, 5000], 30.0, WORKDIR / "triggerer", [100, 1000])),
        ("trigger_creation", lambda: trigger_creation.run([200, 1000], 10, WORKDIR / "trigger_creation")),
        ("airflow", lambda: _airflow("full")),
        ("parse", lambda: parse.run([5000], 3, WORKDIR / "parse", cosmos_runs=1)),
    ],
    "scheduling": [("scheduling", lambda: scheduling.run(WORKDIR / "scheduling", runners=RUNNERS,
                                                         budget_s=BUDGET_S, kinds=KINDS,
                                                         projects_wanted=PROJECTS,
                                                         triggerer_capacity=CAPACITY))],
}


def _airflow(tier: str) -> list:
    from bench import airflow_runs

    return airflow_runs.run(tier, WORKDIR / "airflow")


def write(doc: dict) -> Path:
    """<date>-<machine>.json/.md/.png for the full tier; the quick tier adds '-quick' so it never overwrites them."""
    RESULTS.mkdir(exist_ok=True)
    name = "-".join(x for x in ("" if doc["tier"] == "full" else doc["tier"], doc.get("label", "")) if x)
    path = RESULTS / f"{stem(name)}.json"
    path.write_text(json.dumps(doc, indent=2))
    png = path.with_suffix(".png")
    doc.pop("chart", None)
    doc.pop("chart_error", None)
    if envs.PYTHON.exists() and doc["cosmos_env"].get("matplotlib", {}).get("ok") and "parse" in doc["sections"]:
        proc = subprocess.run([str(envs.PYTHON), "-m", "bench.chart", str(path), str(png)], cwd=envs.ROOT,
                              capture_output=True, text=True)
        if proc.returncode == 0:
            doc["chart"] = png.name
        else:
            doc["chart_error"] = f"chart not drawn: {proc.stderr.strip().splitlines()[-1:]}"
    else:
        doc["chart_error"] = "chart not drawn: matplotlib is not installed in bench/.venv-cosmos"
    path.write_text(json.dumps(doc, indent=2))
    path.with_suffix(".md").write_text(report.render(doc))
    return path


def main() -> None:
    global RUNNERS, BUDGET_S, KINDS, PROJECTS, CAPACITY
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tier", choices=sorted(TIERS))
    parser.add_argument("--only", nargs="*", help="run only these sections")
    parser.add_argument("--label", default="", help="suffix of the results files (two runs of one tier a day)")
    parser.add_argument("--runners", nargs="*", choices=scheduling.RUNNERS, help="scheduling: only these runners")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="scheduling: start no run after S seconds")
    parser.add_argument("--kinds", nargs="*", choices=("proxy", "emulator"), help="scheduling: only these jobs")
    parser.add_argument("--projects", nargs="*", choices=("corner_shop", "synthetic_200"),
                        help="scheduling: only these projects")
    parser.add_argument("--triggerer-capacity", type=int, help="scheduling: the stack's [triggerer] capacity")
    args = parser.parse_args()
    CAPACITY = args.triggerer_capacity
    KINDS = tuple(args.kinds or KINDS)
    PROJECTS = tuple(args.projects or ())
    RUNNERS = tuple(args.runners or scheduling.RUNNERS)
    BUDGET_S = args.budget
    started = time.monotonic()
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    cosmos_env: dict[str, Any] = {}
    try:
        cosmos_env = envs.build()
    except Exception as exc:  # no bench env: the Cosmos rows record why
        cosmos_env = {"error": f"{type(exc).__name__}: {exc}"}
    doc: dict[str, Any] = {"tier": args.tier, "date": datetime.date.today().isoformat(), "machine": machine(),
                           "environment": environment(), "cosmos_env": cosmos_env, "sections": {},
                           "section_errors": {},
                           "notes": [] if args.tier == "scheduling" else list(NOTES), "label": args.label}
    if CAPACITY:
        doc["notes"].append(f"The Airflow stack ran with [triggerer] capacity = {CAPACITY}.")
    for key, fn in TIERS[args.tier]:
        if not args.only or key in args.only:
            _section(doc, key, fn)
            doc["elapsed_s"] = round(time.monotonic() - started, 1)
    path = write(doc)
    print(f"results: {path} and {path.with_suffix('.md')}")
    failures = _failures(doc)
    for failure in failures:
        print(f"FAILED {failure}", flush=True)
    if failures and args.tier == "quick":
        sys.exit(1)  # the quick tier is CI's smoke test: a benchmark that no longer runs must not pass it


def _failures(doc: dict[str, Any]) -> list[str]:
    """Sections that raised and samples that recorded an error, as ``section: where: error`` lines."""
    found = [f"{key}: {error}" for key, error in doc["section_errors"].items()]

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("error"), str):
                found.append(f"{where}: {value['error'][-300:]}")
            for k, v in value.items():
                walk(v, f"{where}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")

    for key, rows in doc["sections"].items():
        walk(rows, key)
    return found


if __name__ == "__main__":
    main()
