"""cosmos-async: dbt on BigQuery from Airflow, with the waiting done in the triggerer.

The public names mirror astronomer-cosmos, so a DAG moves over by changing ``from cosmos`` to
``from cosmos_async``. They resolve lazily: Airflow imports ``cosmos_async.provider`` while it is itself
starting, so importing this package must not import Airflow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "DbtDag": "cosmos_async.render",
    "DbtTaskGroup": "cosmos_async.render",
    "ExecutionConfig": "cosmos_async.config",
    "ExecutionMode": "cosmos_async.config",
    "InvocationMode": "cosmos_async.config",
    "LoadMode": "cosmos_async.config",
    "ProfileConfig": "cosmos_async.config",
    "ProjectConfig": "cosmos_async.config",
    "RenderConfig": "cosmos_async.config",
    "TestBehavior": "cosmos_async.config",
    "GoogleCloudOauthProfileMapping": "cosmos_async.profiles",
    "GoogleCloudServiceAccountDictProfileMapping": "cosmos_async.profiles",
    "GoogleCloudServiceAccountFileProfileMapping": "cosmos_async.profiles",
}
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

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cosmos_async' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
