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
    "ExecutionMode": "cosmos_async.constants",
    "InvocationMode": "cosmos_async.constants",
    "LoadMode": "cosmos_async.constants",
    "ProfileConfig": "cosmos_async.config",
    "ProjectConfig": "cosmos_async.config",
    "RenderConfig": "cosmos_async.config",
    "SourceRenderingBehavior": "cosmos_async.constants",
    "TestBehavior": "cosmos_async.constants",
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
    "SourceRenderingBehavior",
    "TestBehavior",
]

if TYPE_CHECKING:
    from cosmos_async.config import ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
    from cosmos_async.constants import ExecutionMode, InvocationMode, LoadMode, SourceRenderingBehavior, TestBehavior
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
