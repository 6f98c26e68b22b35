"""ExecutionConfig / operator_args options on real task runs (`airflow dags test`), real dbt, the BigQuery emulator.

One Airflow home for both DAGs (one `db migrate`):
- ``exec_subprocess``: LOCAL running the dbt of another virtualenv (dbt_executable_path, hence SUBPROCESS), with
  seed 001's run-time templates in ``env`` (dataset and endpoint come from Airflow Variables at run time) and in
  ``vars``, plus dbt_cmd_flags / quiet / retries. Tables equal plain `dbt build`'s.
- ``exec_virtualenv``: VIRTUALENV with py_requirements: two tasks, one cached virtualenv.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from tests.support.dbt_oracle import DBT_REQUIREMENTS, built_tables, dbt_example_project

REPO = Path(__file__).resolve().parents[2]
PROJECT = REPO / "dev" / "dags" / "dbt" / "corner_shop"
AIRFLOW = Path(sys.executable).with_name("airflow")

DAG_FILE = f"""
\"\"\"Execution options of Cosmos DAGs (an airflow dag file for the tests).\"\"\"
import os
from datetime import datetime, timedelta
from pathlib import Path

from cosmos_async import (DbtDag, ExecutionConfig, ExecutionMode, LoadMode, ProfileConfig, ProjectConfig,
                          RenderConfig)

PROJECT = Path({str(PROJECT)!r})
project_config = ProjectConfig(dbt_project_path=PROJECT, manifest_path=PROJECT / "manifest.json")
profile_config = ProfileConfig(profile_name="corner_shop", target_name="dev",
                               profiles_yml_filepath=PROJECT / "profiles.yml")
common = dict(schedule=None, start_date=datetime(2026, 1, 1), catchup=False, project_config=project_config,
              profile_config=profile_config)

exec_subprocess = DbtDag(
    dag_id="exec_subprocess", **common,
    execution_config=ExecutionConfig(execution_mode=ExecutionMode.LOCAL,
                                     dbt_executable_path=os.environ["EXEC_DBT"]),
    render_config=RenderConfig(load_method=LoadMode.CUSTOM, select=["+stg_orders", "+stg_customers"]),
    operator_args={{
        "retries": 0, "retry_delay": timedelta(seconds=1), "quiet": False,
        "dbt_cmd_flags": ["--threads", "2"],
        "env": {{"BIGQUERY_DATASET": "{{{{ var.value.exec_dataset }}}}",
                "BIGQUERY_API_ENDPOINT": "{{{{ var.value.get('bq_endpoint', 'http://127.0.0.1:1') }}}}"}},
        "vars": {{"run_label": "{{{{ var.value.get('run_label', 'none') }}}}"}},
    }},
)

exec_virtualenv = DbtDag(
    dag_id="exec_virtualenv", **common,
    execution_config=ExecutionConfig(execution_mode=ExecutionMode.VIRTUALENV),
    render_config=RenderConfig(select=["raw_orders", "raw_customers"]),
    operator_args={{"py_requirements": {DBT_REQUIREMENTS!r}, "py_system_site_packages": False,
                   "env": {{"BIGQUERY_DATASET": "{{{{ var.value.venv_dataset }}}}",
                           "BIGQUERY_API_ENDPOINT": "{{{{ var.value.bq_endpoint }}}}"}}}},
)
"""


@pytest.fixture(scope="module")
def client(bigquery_emulator) -> bigquery.Client:
    return bigquery.Client(project="demo-proj", credentials=AnonymousCredentials(),
                           client_options=ClientOptions(api_endpoint=bigquery_emulator.endpoint))


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory, bigquery_emulator, dbt_venv: Path) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("exec_options")
    dags, home = root / "dags", root / "airflow"
    dags.mkdir()
    home.mkdir()
    (dags / "exec_options.py").write_text(DAG_FILE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BIGQUERY_", "AIRFLOW_VAR_"))}
    env.update({
        "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__COSMOS__CACHE_DIR": str(dbt_venv.parent.parent), "EXEC_DBT": str(dbt_venv / "bin" / "dbt"),
        # Airflow Variables, read only when tasks run: the DAG parses without them.
        "AIRFLOW_VAR_EXEC_DATASET": "exec_subprocess", "AIRFLOW_VAR_VENV_DATASET": "exec_venv",
        "AIRFLOW_VAR_BQ_ENDPOINT": bigquery_emulator.endpoint, "AIRFLOW_VAR_RUN_LABEL": "templated-label",
    })
    subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, check=True, capture_output=True)
    return home, env


def _dags_test(home: Path, env: dict, dag_id: str) -> tuple[str, dict[str, str]]:
    result = subprocess.run([str(AIRFLOW), "dags", "test", dag_id], env=env, capture_output=True, text=True,
                            timeout=600)
    with sqlite3.connect(home / "airflow.db") as db:
        states = dict(db.execute("select task_id, state from task_instance where dag_id = ?", (dag_id,)))
    logs = "\n".join(p.read_text(errors="replace") for p in (home / "logs").rglob("*") if p.is_file()
                     and f"dag_id={dag_id}" in str(p))
    output = result.stdout + result.stderr + logs
    assert result.returncode == 0 and states and set(states.values()) == {"success"}, (states, output[-4000:])
    return output, states


def _rendered(home: Path, dag_id: str, task_id: str) -> dict:
    with sqlite3.connect(home / "airflow.db") as db:
        row = db.execute("select rendered_fields from rendered_task_instance_fields where dag_id = ? and task_id = ?",
                         (dag_id, task_id)).fetchone()
    assert row, f"no rendered fields stored for {task_id}"
    return json.loads(row[0])


def test_dbt_executable_path_with_run_time_templates_builds_what_dbt_build_builds(
        airflow_home, bigquery_emulator, client, dbt_venv: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    home, env = airflow_home
    output, states = _dags_test(home, env, "exec_subprocess")
    assert {"raw_orders_seed", "stg_orders.run", "stg_customers.test"} <= set(states)
    # The dbt that ran is the virtualenv's, as a subprocess.
    assert f"running dbt as a subprocess: {dbt_venv}/bin/dbt" in output
    # What the Rendered Template tab shows: env and vars rendered from Airflow Variables at run time.
    rendered = _rendered(home, "exec_subprocess", "stg_orders.run")
    assert rendered["env"] == {"BIGQUERY_DATASET": "exec_subprocess",
                               "BIGQUERY_API_ENDPOINT": bigquery_emulator.endpoint}
    assert rendered["dbt_vars"] == {"run_label": "templated-label"}

    dbt_example_project("exec_oracle", bigquery_emulator.endpoint, tmp_path, monkeypatch)
    built, expected = built_tables(client, "exec_subprocess"), built_tables(client, "exec_oracle")
    assert {".raw_orders", ".stg_orders", ".stg_customers"} <= set(built)
    # run_audit holds hook rows of every model dbt build ran; the selection leaves customers (and its hooks) out.
    assert built.pop(".run_audit") == [("on-run-end", "project")]
    assert built == {name: expected[name] for name in built}


def test_virtualenv_tasks_share_one_cached_virtualenv(airflow_home, client, dbt_venv: Path) -> None:
    home, env = airflow_home
    output, states = _dags_test(home, env, "exec_virtualenv")
    assert set(states) == {"raw_orders_seed", "raw_customers_seed"}
    used = {line.split("dbt from the virtualenv ", 1)[1].split()[0] for line in output.splitlines()
            if "dbt from the virtualenv " in line}
    assert used == {str(dbt_venv)}, used  # both tasks: the one venv for these requirements
    assert [p.name for p in dbt_venv.parent.iterdir() if p.is_dir()] == [dbt_venv.name]
    assert {".raw_orders", ".raw_customers"} <= set(built_tables(client, "exec_venv"))
