"""The extra link from a model task to its BigQuery job in the Google Cloud console."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperatorLink
from airflow.sdk.bases.xcom import BaseXCom

JOB_LINK_KEY = "bigquery_job_link"


class BigQueryJobLink(BaseOperatorLink):
    """Opens the task's last BigQuery job (its URL is stored in XCom by the task or its trigger)."""

    name = "BigQuery job"

    @property
    def xcom_key(self) -> str:
        return JOB_LINK_KEY

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        url = BaseXCom.get_value(ti_key=ti_key, key=JOB_LINK_KEY)
        return url or ""
