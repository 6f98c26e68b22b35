"""Where ``from cosmos.airflow.dag import DbtDag`` lands after changing the import."""

from cosmos_async.render import DbtDag

__all__ = ["DbtDag"]
