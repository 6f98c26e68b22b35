"""The enums of ``cosmos.constants``, under the same module path and names.

Every seed DAG imports ``ExecutionMode``, ``LoadMode`` or ``TestBehavior`` from ``cosmos.constants``; after changing
``cosmos`` to ``cosmos_async`` those imports resolve here. Members cosmos-async does not implement still exist (a
DAG naming one parses as far as the config object, which then says what to use instead).
"""

from __future__ import annotations

from enum import Enum


class ExecutionMode(Enum):
    """Where a dbt node runs."""

    LOCAL = "local"
    AIRFLOW_ASYNC = "airflow_async"
    VIRTUALENV = "virtualenv"
    DOCKER = "docker"
    KUBERNETES = "kubernetes"
    AWS_EKS = "aws_eks"
    AWS_ECS = "aws_ecs"
    AZURE_CONTAINER_INSTANCE = "azure_container_instance"
    GCP_CLOUD_RUN_JOB = "gcp_cloud_run_job"
    GCP_GKE = "gcp_gke"
    WATCHER = "watcher"
    WATCHER_GCP_GKE = "watcher_gcp_gke"
    WATCHER_KUBERNETES = "watcher_kubernetes"


class LoadMode(Enum):
    """How the dbt project becomes a node graph at DAG parse."""

    AUTOMATIC = "automatic"
    DBT_MANIFEST = "dbt_manifest"
    DBT_LS = "dbt_ls"
    CUSTOM = "custom"
    DBT_LS_FILE = "dbt_ls_file"
    DBT_LS_CACHE = "dbt_ls_cache"


class TestBehavior(Enum):
    """Where a model's tests run."""

    __test__ = False  # not a pytest test class

    NONE = "none"
    AFTER_EACH = "after_each"
    AFTER_ALL = "after_all"
    BUILD = "build"


class InvocationMode(Enum):
    """How a LOCAL task starts dbt."""

    DBT_RUNNER = "dbt_runner"
    SUBPROCESS = "subprocess"


class SourceRenderingBehavior(Enum):
    """Which dbt sources get a task of their own."""

    NONE = "none"
    ALL = "all"
    WITH_TESTS_OR_FRESHNESS = "with_tests_or_freshness"


class DbtResourceType(Enum):
    """dbt node kinds, as dbt names them in the manifest."""

    MODEL = "model"
    SNAPSHOT = "snapshot"
    SEED = "seed"
    TEST = "test"
    SOURCE = "source"
    ANALYSIS = "analysis"
    SEMANTIC_MODEL = "semantic_model"
    EXPOSURE = "exposure"
    METRIC = "metric"
    SAVED_QUERY = "saved_query"
    UNIT_TEST = "unit_test"
    FUNCTION = "function"
