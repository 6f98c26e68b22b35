"""cosmos-async: dbt on BigQuery from Airflow, with the waiting done in the triggerer.

The public names mirror astronomer-cosmos, so a DAG moves over by changing ``from cosmos`` to
``from cosmos_async``.
"""

from cosmos_async.config import (
    ExecutionConfig,
    ExecutionMode,
    InvocationMode,
    LoadMode,
    ProfileConfig,
    ProjectConfig,
    RenderConfig,
    TestBehavior,
)
from cosmos_async.profiles import (
    GoogleCloudOauthProfileMapping,
    GoogleCloudServiceAccountDictProfileMapping,
    GoogleCloudServiceAccountFileProfileMapping,
)
from cosmos_async.render import DbtDag, DbtTaskGroup

__all__ = [
    "DbtDag",
    "DbtTaskGroup",
    "ExecutionConfig",
    "ExecutionMode",
    "GoogleCloudOauthProfileMapping",
    "GoogleCloudServiceAccountDictProfileMapping",
    "GoogleCloudServiceAccountFileProfileMapping",
    "InvocationMode",
    "LoadMode",
    "ProfileConfig",
    "ProjectConfig",
    "RenderConfig",
    "TestBehavior",
]
