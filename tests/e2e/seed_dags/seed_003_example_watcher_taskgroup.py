"""Seed 003 (Cosmos docs, the WATCHER execution mode): ``example_watcher_taskgroup``, transcribed with the module
parts it uses from ``dev/dags/example_watcher.py`` (DBT_PROJECT_PATH, operator_args) and the docs' profile_config.

Changed from the seed, and only this: ``cosmos`` → ``cosmos_async`` in the imports; the jaffle_shop project is
mini_shop; PostgresUserPasswordProfileMapping(conn_id="postgres_connection") is its BigQuery counterpart, whose
connection holds the project and dataset as the Postgres one holds host and schema.
"""
import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.models import DAG

try:
    from airflow.providers.standard.operators.empty import EmptyOperator
except ImportError:
    from airflow.operators.empty import EmptyOperator

from cosmos_async import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig
from cosmos_async.constants import ExecutionMode
from cosmos_async.profiles import GoogleCloudServiceAccountDictProfileMapping

DEFAULT_DBT_ROOT_PATH = Path(__file__).parent / "dbt"
DBT_ROOT_PATH = Path(os.getenv("DBT_ROOT_PATH", DEFAULT_DBT_ROOT_PATH))
DBT_PROJECT_NAME = os.getenv("DBT_PROJECT_NAME", "mini_shop")
DBT_PROJECT_PATH = DBT_ROOT_PATH / DBT_PROJECT_NAME

profile_config = ProfileConfig(
    profile_name="jaffle_shop",
    target_name="prod",
    profile_mapping=GoogleCloudServiceAccountDictProfileMapping(
        conn_id="bigquery_connection",
        profile_args={"threads": 8},
    ),
)

operator_args = {
    "install_deps": True,  # install any necessary dependencies before running any dbt command
    "execution_timeout": timedelta(seconds=120),
}

# Currently airflow dags test ignores priority_weight and  weight_rule, for this reason, we're setting the following in the CI only:
if os.getenv("CI"):
    operator_args["trigger_rule"] = "all_success"

with DAG(
    dag_id="example_watcher_taskgroup",
    schedule="@daily",
    start_date=datetime(2023, 1, 1),
    catchup=False,
):
    """
    The simplest example of using Cosmos to render a dbt project as a TaskGroup.
    """
    pre_dbt = EmptyOperator(task_id="pre_dbt")

    first_dbt_task_group = DbtTaskGroup(
        group_id="first_dbt_task_group",
        execution_config=ExecutionConfig(
            execution_mode=ExecutionMode.WATCHER,
        ),
        project_config=ProjectConfig(DBT_PROJECT_PATH),
        profile_config=profile_config,
        operator_args=operator_args,
    )

    pre_dbt >> first_dbt_task_group
