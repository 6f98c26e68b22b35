"""Seed 002 (Cosmos docs, "Getting started with AIRFLOW_ASYNC"): ``dags/cosmos_async_dag.py``, transcribed.

Changed from the seed, and only this: ``cosmos`` → ``cosmos_async`` in the imports; the project folder
``jaffle_shop`` is mini_shop; the placeholder project ``astronomer-**`` is the emulator's. DBT_ADAPTER_VERSION is
set by the deployment (the test) to the installed dbt-bigquery, as the seed's os.getenv expects.
"""
import os
from datetime import datetime
from pathlib import Path

from cosmos_async import (
    DbtDag,
    ExecutionConfig,
    ExecutionMode,
    ProfileConfig,
    ProjectConfig,
)
from cosmos_async.constants import TestBehavior
from cosmos_async.profiles import GoogleCloudServiceAccountDictProfileMapping

DEFAULT_DBT_ROOT_PATH = Path(__file__).resolve().parent / "dbt"
DBT_ROOT_PATH = Path(os.getenv("DBT_ROOT_PATH", DEFAULT_DBT_ROOT_PATH))
DBT_ADAPTER_VERSION = os.getenv("DBT_ADAPTER_VERSION", "1.9")

cosmos_async_dag = DbtDag(
    project_config=ProjectConfig(
        DBT_ROOT_PATH / "mini_shop",
    ),
    profile_config=ProfileConfig(
        profile_name="default",
        target_name="dev",
        profile_mapping=GoogleCloudServiceAccountDictProfileMapping(
            conn_id="gcp_conn",
            profile_args={
                "dataset": "cosmos_async_demo",
                "project": "demo-proj",
            },
        ),
    ),
    execution_config=ExecutionConfig(
        execution_mode=ExecutionMode.AIRFLOW_ASYNC,
        async_py_requirements=[f"dbt-bigquery=={DBT_ADAPTER_VERSION}"],
    ),
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    dag_id="cosmos_async_dag",
    operator_args={
        "location": "US",
        "install_deps": True,
        "full_refresh": True,
    },
)
