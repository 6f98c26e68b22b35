"""Where ``from cosmos.airflow.task_group import DbtTaskGroup`` lands after changing the import."""

from cosmos_async.render import DbtTaskGroup

__all__ = ["DbtTaskGroup"]
