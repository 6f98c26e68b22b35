"""Write benchmark results to bench/results/<date>-<machine>-<name>.json with the run's environment."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def environment() -> dict:
    from importlib.metadata import version

    return {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "bytecode": "no .pyc writes" if sys.dont_write_bytecode else "pyc allowed",
        "versions": {p: version(p) for p in ("apache-airflow", "dbt-core", "dbt-bigquery")},
    }


def write_results(name: str, rows: list) -> Path:
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.date.today().isoformat()
    path = RESULTS / f"{stamp}-{platform.node() or 'host'}-{name}.json"
    path.write_text(json.dumps({"benchmark": name, "environment": environment(), "rows": rows}, indent=2))
    return path
