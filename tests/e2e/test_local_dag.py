"""The example DAG in LOCAL mode under ``airflow dags test``, on the BigQuery emulator, with a service-account key.

Each task runs dbt on the worker with the profile mapped from the Airflow connection. The tables it builds
must equal what a plain ``dbt build`` of the same project builds; a broken model must fail with BigQuery's
message and leave its dependents upstream_failed; the key must not show up in any log.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from tests.support.credentials import secret_fragments, service_account_key
from tests.support.dbt_oracle import built_tables, dbt_example_project

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dev" / "dags"
PROJECT = DAGS / "dbt" / "corner_shop"
AIRFLOW = Path(sys.executable).with_name("airflow")


@pytest.fixture(scope="module")
def client(bigquery_emulator) -> bigquery.Client:
    return bigquery.Client(project="demo-proj", credentials=AnonymousCredentials(),
                           client_options=ClientOptions(api_endpoint=bigquery_emulator.endpoint))
BROKEN_DAG = """
\"\"\"A subset of the example airflow DAG: the seeds it needs, a model that fails, one that does not.\"\"\"
from corner_shop import corner_shop_local, profile_config, project_config
from cosmos_async import DbtDag, ExecutionConfig, ExecutionMode, RenderConfig

corner_shop_broken = DbtDag(dag_id="corner_shop_broken", project_config=project_config,
                            profile_config=profile_config, start_date=corner_shop_local.start_date, schedule=None,
                            execution_config=ExecutionConfig(execution_mode=ExecutionMode.LOCAL),
                            render_config=RenderConfig(select=["+stg_orders", "+stg_customers", "orders"]))
"""


def _airflow_env(home: Path, dags: Path, emulator_endpoint: str, key: dict, dataset: str) -> dict[str, str]:
    conn = {"conn_type": "google_cloud_platform",
            "extra": {"project": "demo-proj", "keyfile_dict": json.dumps(key),
                      "bigquery_api_endpoint": emulator_endpoint}}
    return {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW_CONN_GCP_CONN": json.dumps(conn),
            # The async DAG in the same file is parsed too; it only needs a remote path to be valid.
            "AIRFLOW__COSMOS__REMOTE_TARGET_PATH": f"file://{home}/remote",
            "CORNER_SHOP_DATASET": dataset}


def _dags_test(home: Path, env: dict[str, str], dag_id: str = "corner_shop_local") -> subprocess.CompletedProcess:
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, check=True, capture_output=True)
    return subprocess.run([str(AIRFLOW), "dags", "test", dag_id], env=env, capture_output=True, text=True,
                          timeout=600)


def _states(home: Path, dag_id: str = "corner_shop_local") -> dict[str, str]:
    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute("select task_id, state from task_instance where dag_id = ?", (dag_id,))
        return dict(rows.fetchall())


def _logs(home: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in (home / "logs").rglob("*") if p.is_file())


def test_local_dag_builds_what_dbt_build_builds(tmp_path: Path, bigquery_emulator, client, token_endpoint,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    key = service_account_key(token_endpoint.url)
    home = tmp_path / "airflow"
    env = _airflow_env(home, DAGS, bigquery_emulator.endpoint, key, "local_e2e")
    result = _dags_test(home, env)
    states = _states(home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert states and set(states.values()) == {"success"}, states
    assert "customers.run" in states and "daily_revenue.run" in states

    dbt_example_project("local_oracle", bigquery_emulator.endpoint, tmp_path, monkeypatch)

    built, expected = built_tables(client, "local_e2e"), built_tables(client, "local_oracle")
    assert expected and built == expected
    assert {("pre-hook", "customers"), ("post-hook", "customers"), ("on-run-end", "project")} <= set(
        built[".run_audit"])
    assert token_endpoint.grants > 0, "dbt never used the service-account key"

    leaked = [f for f in secret_fragments(key) if f in _logs(home) + result.stdout + result.stderr]
    assert not leaked, f"key material in task logs: {leaked}"
    project_files = "\n".join(p.read_text(errors="replace") for p in PROJECT.rglob("*") if p.is_file())
    assert not [f for f in secret_fragments(key) if f in project_files]


def test_broken_model_fails_with_warehouse_message_and_dependents_upstream_failed(
        tmp_path: Path, bigquery_emulator, token_endpoint) -> None:
    dags = tmp_path / "dags"
    shutil.copytree(DAGS, dags, ignore=shutil.ignore_patterns("target", "logs", "__pycache__"))
    broken = dags / "dbt" / "corner_shop" / "models" / "staging" / "stg_orders.sql"
    broken.write_text("select order_id, no_such_column from {{ ref('raw_orders') }}\n")
    (dags / "corner_shop_broken.py").write_text(BROKEN_DAG)
    home = tmp_path / "airflow"
    env = _airflow_env(home, dags, bigquery_emulator.endpoint, service_account_key(token_endpoint.url), "broken")
    result = _dags_test(home, env, "corner_shop_broken")
    states = _states(home, "corner_shop_broken")

    assert result.returncode != 0
    assert states["stg_orders.run"] == "failed", states
    assert states["orders.run"] == "upstream_failed", states
    assert states["stg_customers.run"] == "success", states
    # `airflow dags test` runs the tasks in its own process and prints their logs.
    assert "no_such_column" in _logs(home) + result.stdout + result.stderr, "the task log lacks BigQuery's error"
