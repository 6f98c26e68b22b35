"""The example project rendered as Airflow tasks: structure, assets, billing project, parse-time errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cosmos_async import (
    DbtDag,
    ExecutionConfig,
    ExecutionMode,
    GoogleCloudServiceAccountDictProfileMapping,
    ProfileConfig,
    ProjectConfig,
    RenderConfig,
)

PROJECT = Path(__file__).resolve().parents[2] / "dev" / "dags" / "dbt" / "corner_shop"


def _dag(monkeypatch: pytest.MonkeyPatch, profile_args: dict | None = None, **kwargs) -> DbtDag:
    monkeypatch.setenv("AIRFLOW__COSMOS__REMOTE_TARGET_PATH", "file:///tmp/x")
    mapping = GoogleCloudServiceAccountDictProfileMapping(
        conn_id="gcp_conn", profile_args={"dataset": "shop", "project": "data-proj", **(profile_args or {})})
    return DbtDag(dag_id="render_test", schedule=None,
                  project_config=ProjectConfig(dbt_project_path=PROJECT, manifest_path=PROJECT / "manifest.json"),
                  profile_config=ProfileConfig(profile_name="corner_shop", target_name="dev",
                                               profile_mapping=mapping),
                  **{"execution_config": ExecutionConfig(execution_mode=ExecutionMode.AIRFLOW_ASYNC), **kwargs})


def test_jobs_are_billed_to_execution_project(monkeypatch: pytest.MonkeyPatch) -> None:
    """astronomer-cosmos #1933: the profile's execution_project was ignored."""
    dag = _dag(monkeypatch, {"execution_project": "billing-proj"})
    assert dag.task_dict["orders.run"].project == "billing-proj"
    assert _dag(monkeypatch).task_dict["orders.run"].project == "data-proj"


def test_async_dag_is_setup_nodes_teardown(monkeypatch: pytest.MonkeyPatch) -> None:
    dag = _dag(monkeypatch)
    setup, teardown = dag.task_dict["dbt_setup_async"], dag.task_dict["dbt_teardown_async"]
    assert setup.is_setup and teardown.is_teardown
    assert dag.task_dict["dbt_on_run_end"].is_teardown  # runs after failures, yet failures still fail the run
    assert dag.task_dict["dbt_on_run_start"].upstream_task_ids == {"dbt_setup_async"}
    assert "int_order_payments" not in " ".join(dag.task_ids)  # ephemeral: no task
    # daily_revenue reads stg_orders/stg_payments through the ephemeral model: the edge passes through it.
    assert {"stg_orders.test", "stg_payments.test"} <= dag.task_dict["daily_revenue.run"].upstream_task_ids


def test_assets_use_the_real_relation(monkeypatch: pytest.MonkeyPatch) -> None:
    outlets = {t.task_id: [a.uri for a in t.outlets] for t in _dag(monkeypatch).tasks}
    # orders has alias fct_orders and the custom schema marts (dataset corner_shop_marts in the manifest).
    assert outlets["orders.run"] == ["bigquery://demo-proj/corner_shop_marts/fct_orders"]
    assert outlets["stg_orders.run"] == ["bigquery://demo-proj/corner_shop/stg_orders"]
    assert outlets["orders.test"] == []
    no_assets = _dag(monkeypatch, render_config=RenderConfig(emit_datasets=False))
    assert all(not t.outlets for t in no_assets.tasks)


def test_parsing_with_a_manifest_imports_no_dbt(tmp_path: Path) -> None:
    script = (f"import sys; sys.path.insert(0, {str(PROJECT.parents[1])!r}); import corner_shop; "
              "heavy = [m for m in ('dbt', 'google.cloud.bigquery', 'gcsfs') if m in sys.modules]; "
              "print(len(corner_shop.corner_shop.tasks), heavy)")
    env = {"AIRFLOW_HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
           "AIRFLOW__COSMOS__REMOTE_TARGET_PATH": f"file://{tmp_path}/remote"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    tasks, heavy = out.stdout.split(maxsplit=1)
    assert int(tasks) > 20 and heavy.strip() == "[]"


def test_a_freshness_wait_in_local_mode_is_refused_naming_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from cosmos_async.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"source_freshness_wait needs ExecutionMode\.AIRFLOW_ASYNC"):
        _dag(monkeypatch, execution_config=ExecutionConfig(execution_mode=ExecutionMode.LOCAL),
             operator_args={"source_freshness_wait": {"interval_minutes": 5, "timeout_minutes": 60}})
