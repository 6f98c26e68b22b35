"""Build the separate bench environment for astronomer-cosmos (``bench/.venv-cosmos``), reproducibly.

The pins come from the main project's lock (``uv export --frozen --no-dev --no-hashes``), so Cosmos is resolved
against the SAME Airflow / dbt versions the project runs on; the main pyproject and uv.lock are never touched.
Three installs, each recorded (with its error text when it fails) in ``bench/.venv-cosmos/bench-env.json``:

1. ``astronomer-cosmos`` (newest) + the lock's pins (as constraints): the environment the Cosmos figures use;
2. ``apache-airflow-providers-google`` under the same constraints (for BigQueryInsertJobTrigger);
3. ``matplotlib`` (for the chart; only ever installed here, never into the project).

Run: ``python -m bench.envs [--force]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "bench" / ".venv-cosmos"
PYTHON = VENV / "bin" / "python"
REPORT = VENV / "bench-env.json"
# The bench env runs our packages from this checkout, not installed: cosmos_async at the root and its triggers
# package (cosmos_async_triggers) under triggers/.
PYTHONPATH = f"{ROOT}:{ROOT / 'triggers'}"


def lock_constraints(dest: Path) -> Path:
    """The lock's pins for this Python, without the workspace's own (editable) packages."""
    out = subprocess.run(["uv", "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project",
                          "--no-emit-workspace"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    lines = [line for line in out.splitlines() if line and not line.startswith(("#", "-e", " "))]
    dest.write_text("\n".join(lines) + "\n")
    return dest


def _install(packages: list[str], constraints: Path) -> dict:
    cmd = ["uv", "pip", "install", "--python", str(PYTHON), "--compile-bytecode", "-c", str(constraints), *packages]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    result = {"packages": packages, "ok": proc.returncode == 0}
    if proc.returncode:
        result["error"] = (proc.stderr or proc.stdout)[-2500:]
    return result


def versions() -> dict[str, str]:
    if not PYTHON.exists():
        return {}
    code = ("import json, importlib.metadata as m\nout = {}\n"
            "for p in ('astronomer-cosmos', 'apache-airflow', 'dbt-core', 'dbt-bigquery',"
            " 'apache-airflow-providers-google', 'matplotlib'):\n"
            "    try: out[p] = m.version(p)\n    except m.PackageNotFoundError: pass\nprint(json.dumps(out))")
    proc = subprocess.run([str(PYTHON), "-c", code], capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def build(force: bool = False) -> dict:
    """Create (or reuse) the environment; return the install report."""
    if REPORT.exists() and not force:
        return json.loads(REPORT.read_text())
    if VENV.exists():
        shutil.rmtree(VENV)
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run(["uv", "venv", "--python", py, str(VENV)], check=True, capture_output=True)
    constraints = lock_constraints(VENV / "lock-constraints.txt")
    report = {
        "cosmos": _install(["astronomer-cosmos", "apache-airflow", "dbt-core", "dbt-bigquery"], constraints),
        "providers_google": _install(["apache-airflow-providers-google"], constraints),
        "matplotlib": _install(["matplotlib"], constraints),
    }
    report["versions"] = versions()
    REPORT.write_text(json.dumps(report, indent=2))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild from scratch")
    report = build(parser.parse_args().force)
    for key in ("cosmos", "providers_google", "matplotlib"):
        print(f"{key:17} {'ok' if report[key]['ok'] else 'FAILED: ' + report[key]['error'][-400:]}")
    print("versions:", report["versions"])


if __name__ == "__main__":
    main()
