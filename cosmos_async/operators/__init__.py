"""Airflow operators. Each module imports dbt, BigQuery or fsspec only inside ``execute``: DAG parsing stays light."""
