"""Seed 001 (MWAA + Redshift blog): ``dags/dbt_tickit_medallion_dag.py``, transcribed.

Changed from the seed, and only this: ``cosmos`` → ``cosmos_async`` in the imports; the Astro paths are relative to
this file (``/usr/local/airflow`` is its folder's parent, where the test links a dbt virtualenv as Astro documents); the tickit project is
mini_shop; the Redshift env entries without a default became their BigQuery counterparts (API endpoint, project).
The entries with defaults stay as the seed has them: they are unused by BigQuery, but are still rendered at run time.
"""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import yaml
from airflow.utils import timezone

from cosmos_async import DbtDag, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos_async.constants import ExecutionMode, LoadMode, TestBehavior

DBT_VENV_BIN = str(Path(__file__).parents[1] / "python3-virtualenv" / "dbt-env" / "bin" / "dbt")
DBT_PROJECT_PATH = Path(__file__).parent / "dbt" / "mini_shop"
DBT_PROFILE_NAME = yaml.safe_load((DBT_PROJECT_PATH / "dbt_project.yml").read_text())["profile"]

dbt_tickit_medallion_dag = DbtDag(
    dag_id="dbt_tickit_medallion_dag",
    project_config=ProjectConfig(
        dbt_project_path=DBT_PROJECT_PATH,
    ),
    profile_config=ProfileConfig(
        profile_name=DBT_PROFILE_NAME,
        target_name="dwh",
        profiles_yml_filepath=DBT_PROJECT_PATH / "profiles.yml",
    ),
    execution_config=ExecutionConfig(
        execution_mode=ExecutionMode.LOCAL,
        dbt_executable_path=DBT_VENV_BIN,
    ),
    render_config=RenderConfig(
        load_method=LoadMode.CUSTOM,
        test_behavior=TestBehavior.NONE,
    ),
    operator_args={
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "env": {
            "DBT_TARGET": "dwh",
            "DBT_REDSHIFT_REGION": "{{ var.value.get('redshift_region', 'eu-central-1') }}",
            "DBT_BIGQUERY_API_ENDPOINT": "{{ var.value.bigquery_api_endpoint }}",
            "DBT_REDSHIFT_USER": "{{ var.value.get('redshift_db_user', 'admin') }}",
            "DBT_BIGQUERY_PROJECT": "{{ var.value.bigquery_project }}",
            "DBT_BIGQUERY_DATASET": "tickit_bronze",
            "DBT_REDSHIFT_PORT": "5439",
            "DBT_THREADS": "1",
            "DBT_REDSHIFT_CLUSTER_ID": "{{ var.value.get('redshift_cluster_identifier', '') }}",
            "DBT_REDSHIFT_WORKGROUP_NAME": "{{ var.value.get('redshift_workgroup_name', '') }}",
            "DBT_TICKIT_S3_IAM_ROLE_ARN": "{{ var.value.get('tickit_source_iam_role_arn', '') }}",
            "DBT_TICKIT_S3_REGION": "{{ var.value.get('tickit_source_s3_region', 'us-east-1') }}",
        },
    },
    schedule="@daily",
    start_date=timezone.utcnow() - timedelta(days=1),
    tags=["dbt", "tickit", "medallion", "cosmos"],
    catchup=False,
)
