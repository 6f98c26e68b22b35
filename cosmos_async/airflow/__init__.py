"""Cosmos's ``cosmos.airflow`` module paths (``cosmos.airflow.dag``, ``cosmos.airflow.task_group``)."""
