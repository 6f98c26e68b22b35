"""Two AIRFLOW_ASYNC DbtTaskGroups of one project in one DAG (seed 000's layout: snapshots, then models).

Each group has its own setup and teardown. Before run files were namespaced per task group, the second group's
setup overwrote the first's index and the first group's teardown deleted both groups' files, so the other
group's tasks failed with "no index". Here the DAG runs twice under ``airflow dags test``; its tables must equal
two plain ``dbt build``s of the same project, and nothing may be left under the remote target path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from tests.support.credentials import service_account_key
from tests.support.dbt_oracle import built_tables, dbt_build, dbt_example_project

REPO = Path(__file__).resolve().parents[2]
PROJECT = REPO / "dev" / "dags" / "dbt" / "corner_shop"
AIRFLOW = Path(sys.executable).with_name("airflow")
DAG_ID = "corner_shop_two_groups"
DATASET = "tgroups"

DAG_FILE = '''"""Two dbt task groups of one project in one airflow DAG: seeds and the snapshot first, then the rest."""
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG
from cosmos_async import (DbtTaskGroup, ExecutionConfig, ExecutionMode, GoogleCloudServiceAccountDictProfileMapping,
                          ProfileConfig, ProjectConfig, RenderConfig)

PROJECT = Path(__file__).parent / "corner_shop"
project = ProjectConfig(dbt_project_path=PROJECT, manifest_path=PROJECT / "manifest.json")
profile = ProfileConfig(profile_name="corner_shop", target_name="dev",
                        profile_mapping=GoogleCloudServiceAccountDictProfileMapping(
                            conn_id="gcp_conn", profile_args={"dataset": "@DATASET@"}))
execution = ExecutionConfig(execution_mode=ExecutionMode.AIRFLOW_ASYNC)
# Staging goes first with the snapshot: a relationships test between two staging models needs both built.
FIRST = ["resource_type:seed", "path:models/staging", "+resource_type:snapshot"]
LAST = ["path:models/marts", "assert_payments_match_orders"]  # that test also reads a staging model

with DAG(dag_id="@DAG_ID@", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    snapshots = DbtTaskGroup(group_id="snapshots", project_config=project, profile_config=profile,
                             execution_config=execution,
                             render_config=RenderConfig(select=FIRST, exclude=["assert_payments_match_orders"]))
    models = DbtTaskGroup(group_id="models", project_config=project, profile_config=profile,
                          execution_config=execution, render_config=RenderConfig(select=LAST))
    snapshots >> models
'''.replace("@DATASET@", DATASET).replace("@DAG_ID@", DAG_ID)


@pytest.fixture(scope="module")
def client(bigquery_emulator) -> bigquery.Client:
    return bigquery.Client(project="demo-proj", credentials=AnonymousCredentials(),
                           client_options=ClientOptions(api_endpoint=bigquery_emulator.endpoint))


def _states(home: Path) -> dict[tuple[str, str], str]:
    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute("select run_id, task_id, state from task_instance where dag_id = ?", (DAG_ID,))
        return {(run, task): state for run, task, state in rows.fetchall()}


def test_two_task_groups_keep_their_own_files_and_build_what_dbt_build_builds(
        tmp_path: Path, bigquery_emulator, client, token_endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    dags, home, remote = tmp_path / "dags", tmp_path / "airflow", tmp_path / "remote"
    shutil.copytree(PROJECT, dags / "corner_shop", ignore=shutil.ignore_patterns("target", "logs"))
    (dags / "two_groups.py").write_text(DAG_FILE)
    conn = {"conn_type": "google_cloud_platform",
            "extra": {"project": "demo-proj", "keyfile_dict": json.dumps(service_account_key(token_endpoint.url)),
                      "bigquery_api_endpoint": bigquery_emulator.endpoint}}
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW_CONN_GCP_CONN": json.dumps(conn),
           "AIRFLOW__COSMOS__REMOTE_TARGET_PATH": f"file://{remote}"}
    home.mkdir()
    subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, check=True, capture_output=True)

    outputs = []
    for day in ("2026-02-01", "2026-02-02"):
        result = subprocess.run([str(AIRFLOW), "dags", "test", DAG_ID, day], env=env, capture_output=True,
                                text=True, timeout=600)
        outputs.append(result.stdout + result.stderr)
        assert result.returncode == 0, outputs[-1][-4000:]
        left = [p for p in remote.rglob("*") if p.is_file()]
        assert not left, f"files left after the run of {day}: {left}"

    states = _states(home)
    runs = {run for run, _ in states}
    assert len(runs) == 2 and set(states.values()) == {"success"}, states
    for group in ("snapshots", "models"):
        assert {(run, f"{group}.dbt_teardown_async") for run in runs} <= set(states), states
    assert any(task.startswith("snapshots.") and "customers_snapshot" in task for _, task in states), states
    # Each group's teardown removed its own files only: the two groups' counts add up, none deleted the other's.
    removed = re.findall(r"removed (\d+) files under \S+/" + DAG_ID + r"/[^/\s]+/(snapshots|models)\b",
                         "\n".join(outputs))
    assert {group for _, group in removed} == {"snapshots", "models"}, removed

    dbt_build(dbt_example_project(f"oracle_{DATASET}", bigquery_emulator.endpoint, tmp_path, monkeypatch))
    built, expected = built_tables(client, DATASET), built_tables(client, f"oracle_{DATASET}")
    assert expected and built == expected
