"""The teardown task of an AIRFLOW_ASYNC run: delete this run's remote files, whatever happened upstream."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator


class DbtAsyncTeardownOperator(BaseOperator):
    """Delete ``{remote_target_path}/{dag_id}/{run_id}`` (or its task group's part) and nothing else."""

    ui_color = "#eeeeee"

    def __init__(self, *, remote_target_path: str, remote_target_path_conn_id: str | None,
                 dbt_group_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dbt_group_id = dbt_group_id
        self.remote_target_path = remote_target_path
        self.remote_target_path_conn_id = remote_target_path_conn_id

    def execute(self, context: Any) -> int:
        from cosmos_async.remote import RemoteTarget, delete_run

        target = RemoteTarget.from_config(self.remote_target_path, self.remote_target_path_conn_id)
        dag_id, run_id = context["dag_run"].dag_id, context["run_id"]
        removed = delete_run(target, dag_id, run_id, self.dbt_group_id)
        self.log.info("removed %d files under %s", removed, target.run_prefix(dag_id, run_id, self.dbt_group_id))
        return removed
