"""Regenerate dev/dags/dbt/corner_shop/manifest.json with a real `dbt parse` (no warehouse needed).

Run: `.venv/bin/python dev/scripts/make_manifest.py`. Never edit manifest.json by hand: change the project and rerun.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1] / "dags" / "dbt" / "corner_shop"
DBT = Path(sys.executable).with_name("dbt")

# Fields that change on every parse; fixed values keep the committed file's diffs to real changes.
_EPOCH = "1970-01-01T00:00:00Z"
_VOLATILE_METADATA = {"generated_at": _EPOCH, "invocation_id": "00000000-0000-0000-0000-000000000000",
                      "invocation_started_at": _EPOCH, "run_started_at": _EPOCH, "env": {}, "user_id": None}


def _normalise(manifest: dict[str, Any], project: Path) -> dict[str, Any]:
    """Fix volatile fields; seeds' absolute ``root_path`` becomes ".", the directory holding manifest.json."""
    metadata = manifest["metadata"]
    for key, value in _VOLATILE_METADATA.items():
        if key in metadata:
            metadata[key] = value
    for section in manifest.values():
        if isinstance(section, dict):
            for entry in section.values():
                if not isinstance(entry, dict):
                    continue
                if "created_at" in entry:
                    entry["created_at"] = 0.0
                if entry.get("root_path") == str(project):
                    entry["root_path"] = "."
    return manifest


def make_manifest(project: Path = PROJECT, out: Path | None = None) -> Path:
    """Parse ``project`` into a temporary target dir and write its normalised manifest.json to ``out``."""
    out = out or project / "manifest.json"
    # The profile's defaults, not whatever the caller's shell points at: the manifest records project and dataset.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BIGQUERY_", "DBT_"))}
    env["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    with tempfile.TemporaryDirectory(prefix="corner-shop-parse-") as tmp:
        target = Path(tmp) / "target"
        cmd = [str(DBT), "parse", "--no-partial-parse", "--project-dir", str(project), "--profiles-dir", str(project),
               "--target-path", str(target), "--log-path", str(Path(tmp) / "logs")]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"dbt parse failed ({result.returncode}):\n{result.stdout[-4000:]}{result.stderr[-4000:]}")
        manifest = json.loads((target / "manifest.json").read_text())
    out.write_text(json.dumps(_normalise(manifest, project), indent=1, sort_keys=True) + "\n")
    return out


if __name__ == "__main__":
    print(make_manifest())
