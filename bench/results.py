"""Write benchmark results: bench/results/<date>-<machine>[-<name>].json with the run's environment."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    return platform.node() or "host"


def stem(name: str = "") -> str:
    return f"{datetime.date.today().isoformat()}-{machine()}" + (f"-{name}" if name else "")


def environment() -> dict:
    from importlib.metadata import version

    return {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "bytecode": "samples run with PYTHONDONTWRITEBYTECODE unset after an untimed warm-up (.pyc compiled)",
        "versions": {p: version(p) for p in ("apache-airflow", "dbt-core", "dbt-bigquery")},
    }


def write_results(name: str, rows: list) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{stem(name)}.json"
    path.write_text(json.dumps({"benchmark": name, "environment": environment(), "rows": rows}, indent=2))
    return path
