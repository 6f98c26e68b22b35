"""The example dbt project as Airflow DAGs: one task per dbt node.

``corner_shop`` runs each node as a BigQuery job awaited in the triggerer (AIRFLOW_ASYNC; needs
AIRFLOW__COSMOS__REMOTE_TARGET_PATH and ..._CONN_ID). ``corner_shop_local`` runs dbt on a worker per node
(LOCAL), the baseline the async mode is compared with.
"""

import os
from datetime import datetime
from pathlib import Path

from cosmos_async import (
    DbtDag,
    ExecutionConfig,
    ExecutionMode,
    GoogleCloudServiceAccountDictProfileMapping,
    ProfileConfig,
    ProjectConfig,
)

PROJECT = Path(__file__).parent / "dbt" / "corner_shop"

project_config = ProjectConfig(dbt_project_path=PROJECT, manifest_path=PROJECT / "manifest.json")
profile_config = ProfileConfig(
    profile_name="corner_shop",
    target_name="dev",
    profile_mapping=GoogleCloudServiceAccountDictProfileMapping(
        conn_id="gcp_conn",
        # An env var only so that tests and the demo can isolate their runs in datasets of their own.
        profile_args={"dataset": os.environ.get("CORNER_SHOP_DATASET", "corner_shop")},
    ),
)

corner_shop = DbtDag(
    dag_id="corner_shop",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    project_config=project_config,
    profile_config=profile_config,
    execution_config=ExecutionConfig(execution_mode=ExecutionMode.AIRFLOW_ASYNC),
    operator_args={"location": "US"},
)

corner_shop_local = DbtDag(
    dag_id="corner_shop_local",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    project_config=project_config,
    profile_config=profile_config,
    execution_config=ExecutionConfig(execution_mode=ExecutionMode.LOCAL),
)
