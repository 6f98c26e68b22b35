"""The embedded demo (``./dev/demo`` → ``python -m dev.demo``) end to end, as a user runs it.

One run of the example DAG on the emulators and a real Airflow stack, in a state directory of the test's own: exit
code 0, every model of the dbt project in the summary table with status success, and no process left behind.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "dev" / "dags" / "dbt" / "corner_shop" / "manifest.json"

pytestmark = pytest.mark.e2e


def _built_models() -> set[str]:
    nodes = json.loads(MANIFEST.read_text())["nodes"].values()
    return {n["name"] for n in nodes if n["resource_type"] == "model" and n["config"]["materialized"] != "ephemeral"}


def _summary_rows(stdout: str) -> dict[str, str]:
    """task id → status, from the last summary table the demo printed."""
    table = stdout.rsplit("Summary:\n", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines()[2:]:  # header and rule
        task, status = line.split()[:2]
        rows[task] = status
    return rows


def _leftovers(home: Path, recorded: list[list[float]]) -> list[str]:
    """Processes still alive that the demo started: recorded ones (same pid and start time) and any process whose
    environment or command line points into the demo's state directory (catches short-lived grandchildren)."""
    found = []
    for pid, started in recorded:
        try:
            proc = psutil.Process(int(pid))
            if abs(proc.create_time() - started) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{pid} {' '.join(proc.cmdline())}")
        except psutil.NoSuchProcess:
            pass
    marker = str(home)
    me = psutil.Process()
    for proc in psutil.process_iter():
        if proc.pid == me.pid:
            continue
        try:
            env = proc.environ()
            if marker in env.get("AIRFLOW_HOME", "") or marker in env.get("HOME", "") or marker in " ".join(
                    proc.cmdline()):
                found.append(f"{proc.pid} {' '.join(proc.cmdline())}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def test_demo_runs_the_example_dag_and_leaves_nothing_running(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "dev.demo", "--home", str(home), "--runs", "1", "--timeout", "420"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    out = res.stdout
    assert res.returncode == 0, f"exit {res.returncode}\n{out[-6000:]}\n{res.stderr[-3000:]}"

    rows = _summary_rows(out)
    models = _built_models()
    model_tasks = {t for t in rows if re.sub(r"[._]run$", "", t) in models and re.search(r"[._]run$", t)}
    assert {re.sub(r"[._]run$", "", t) for t in model_tasks} == models, rows
    assert all(rows[t] == "success" for t in model_tasks), rows
    assert {"dbt_setup_async", "dbt_teardown_async"} <= set(rows)
    assert all(status == "success" for status in rows.values()), rows

    assert "Airflow UI   http://127.0.0.1:" in out and "password" in out
    assert re.search(r"Tables\s+\d+ in project demo-proj", out)
    assert "Exit code 0" in out

    record = json.loads((home / "processes.json").read_text())
    assert record["exit_code"] == 0 and len(record["pids"]) >= 6  # two emulators and four Airflow components
    assert not _leftovers(home, record["pids"]), _leftovers(home, record["pids"])
