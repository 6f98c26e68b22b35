"""LOCAL dbt as the oracle: build a project for real and read tables back, for comparisons."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from google.cloud import bigquery

# The dbt of test virtualenvs: the versions installed here, so uv builds them from its cache.
DBT_REQUIREMENTS = [f"dbt-bigquery=={metadata.version('dbt-bigquery')}", f"dbt-core=={metadata.version('dbt-core')}"]


def dbt_build(project: Path, *, seeds_only: bool = False, exclude: tuple[str, ...] = ()) -> None:
    """``dbt build`` (or ``dbt seed``) with the project's own profiles.yml and the current environment."""
    dbt = Path(sys.executable).with_name("dbt")
    command = ["seed"] if seeds_only else ["build", *(["--exclude", *exclude] if exclude else [])]
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    out = subprocess.run([str(dbt), *command, "--project-dir", str(project), "--profiles-dir", str(project),
                          "--target-path", str(project / "target-oracle"), "--log-path", str(project / "logs")],
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:]


EXAMPLE_PROJECT = Path(__file__).resolve().parents[2] / "dev" / "dags" / "dbt" / "corner_shop"


def dbt_example_project(dataset: str, endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *,
                        seeds_only: bool = False) -> Path:
    """Plain dbt (build, or seed only) on a copy of the example project, into ``dataset`` on the emulator; returns
    the copy, for a later run (``monkeypatch`` keeps the profile's env set for it)."""
    monkeypatch.setenv("BIGQUERY_API_ENDPOINT", endpoint)
    monkeypatch.setenv("BIGQUERY_DATASET", dataset)
    project = tmp_path / dataset
    shutil.copytree(EXAMPLE_PROJECT, project, ignore=shutil.ignore_patterns("target", "logs"))
    dbt_build(project, seeds_only=seeds_only)
    return project


def table_rows(client: bigquery.Client, dataset: str, table: str) -> list[tuple]:
    rows = client.query(f"select * from `{client.project}.{dataset}.{table}`").result()
    return sorted(tuple(r.values()) for r in rows)


SNAPSHOT_META = ("dbt_scd_id", "dbt_updated_at", "dbt_valid_from", "dbt_valid_to")


def built_tables(client: bigquery.Client, dataset: str) -> dict[str, list[tuple]]:
    """Every table and view dbt built for ``dataset`` (custom schemas are ``<dataset>_<name>``), comparable
    across runs: bookkeeping that carries the time of the run is left out."""
    tables = {}
    for ds in client.list_datasets():
        if ds.dataset_id == dataset or ds.dataset_id.startswith(dataset + "_"):
            for table in client.list_tables(ds.dataset_id):
                suffix = ds.dataset_id[len(dataset):]
                tables[f"{suffix}.{table.table_id}"] = _comparable_rows(client, ds.dataset_id, table.table_id)
    return tables


def _comparable_rows(client: bigquery.Client, dataset: str, table: str) -> list[tuple]:
    relation = f"`{client.project}.{dataset}.{table}`"
    if table == "run_audit":
        # Hooks append one timestamped row each time they fire, and LOCAL fires the project hooks once per task
        # (each task is one dbt invocation): compare which hooks fired, not how often or when.
        rows = client.query(f"select distinct event, node_name from {relation}").result()
        return sorted(tuple(r.values()) for r in rows)
    schema = client.get_table(f"{client.project}.{dataset}.{table}").schema
    if any(field.name in SNAPSHOT_META for field in schema):
        # Snapshot bookkeeping columns carry timestamps of the run: compare the data columns only.
        columns = ", ".join(f"`{f.name}`" for f in schema if f.name not in SNAPSHOT_META)
        rows = client.query(f"select {columns} from {relation}").result()
        return sorted(tuple(r.values()) for r in rows)
    return table_rows(client, dataset, table)
