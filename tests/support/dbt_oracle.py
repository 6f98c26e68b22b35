"""LOCAL dbt as the oracle: build a project for real and read tables back, for comparisons."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from google.cloud import bigquery


def dbt_build(project: Path, *, seeds_only: bool = False) -> None:
    """``dbt build`` (or ``dbt seed``) with the project's own profiles.yml and the current environment."""
    dbt = Path(sys.executable).with_name("dbt")
    command = ["seed"] if seeds_only else ["build"]
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    out = subprocess.run([str(dbt), *command, "--project-dir", str(project), "--profiles-dir", str(project),
                          "--target-path", str(project / "target-oracle"), "--log-path", str(project / "logs")],
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:]


def table_rows(client: bigquery.Client, dataset: str, table: str) -> list[tuple]:
    rows = client.query(f"select * from `{client.project}.{dataset}.{table}`").result()
    return sorted(tuple(r.values()) for r in rows)
