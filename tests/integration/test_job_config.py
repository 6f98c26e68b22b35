"""Every node job carries what dbt-bigquery would put on it, from a profile that sets the job options.

The example project runs through the real path in one process, as ``airflow dags test`` runs tasks: the DbtDag's
setup operator captures (real dbt against the recording endpoint in front of the BigQuery emulator) and uploads to
file://, then each node task's trigger runs its jobs through the lifecycle proxy, which records every jobs.insert
body, and ``execute_complete`` finishes the task. The profile sets ``maximum_bytes_billed``, ``priority: batch``,
``job_execution_timeout_seconds``, ``job_retries``, ``job_retry_deadline_seconds`` and
``impersonate_service_account`` (the local IAM Credentials endpoint issues the delegated tokens); the project labels
its jobs from the query comment (``job_label``). The tables must equal plain ``dbt build``'s.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from cosmos_async_triggers import auth
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from cosmos_async import DbtDag, ExecutionConfig, ExecutionMode, ProfileConfig, ProjectConfig
from cosmos_async.operators.bigquery import DbtBigQueryAsyncOperator
from tests.integration.test_stale_sql import _dag_run
from tests.support.bq_lifecycle_proxy import LifecycleProxy
from tests.support.connections import emulator_connections
from tests.support.credentials import IamCredentialsEndpoint
from tests.support.dbt_oracle import EXAMPLE_PROJECT, built_tables, dbt_build

PROJECT = "demo-proj"
DAG_ID = "introspect"  # the DAG id test_stale_sql's task runner gives its runs
INSERT = r"^/bigquery/v2/projects/[^/]+/jobs$"
# dbt labels each job with the comment's keys (job_label); "Analytics" shows that dbt's sanitizing is kept.
QUERY_COMMENT = """
query-comment:
  comment: '{"team": "Analytics", "node_id": "{{ node.unique_id if node else "none" }}"}'
  job-label: true
"""
TARGET_SA = "dbt-jobs@demo-proj.iam.gserviceaccount.com"
JOB_OPTIONS = {"maximum_bytes_billed": 1000000000, "priority": "batch", "job_execution_timeout_seconds": 600,
               "job_retries": 3, "job_retry_deadline_seconds": 300, "impersonate_service_account": TARGET_SA}


def _project_with_job_options(dest: Path, *, impersonate: bool = True) -> Path:
    """The example project whose profile sets JOB_OPTIONS (without the impersonation for plain dbt: dbt-bigquery
    always asks Google's own IAM endpoint, which is not reachable here)."""
    shutil.copytree(EXAMPLE_PROJECT, dest, ignore=shutil.ignore_patterns("target", "target-*", "logs"))
    profiles = yaml.safe_load((dest / "profiles.yml").read_text())
    options = {k: v for k, v in JOB_OPTIONS.items() if impersonate or k != "impersonate_service_account"}
    profiles["corner_shop"]["outputs"]["dev"].update(options)
    (dest / "profiles.yml").write_text(yaml.safe_dump(profiles))
    with (dest / "dbt_project.yml").open("a") as project:
        project.write(QUERY_COMMENT)
    return dest


def test_profile_job_options_reach_every_node_job_and_tables_equal_dbt_build(
        tmp_path: Path, bigquery_emulator, proxy: LifecycleProxy, iam: IamCredentialsEndpoint,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ours = _project_with_job_options(tmp_path / "ours")
    oracle = _project_with_job_options(tmp_path / "oracle", impersonate=False)
    client = bigquery.Client(project=PROJECT, credentials=AnonymousCredentials(),
                             client_options=ClientOptions(api_endpoint=bigquery_emulator.endpoint))
    # The profile itself authenticates the capture and the triggers, all through the proxy.
    monkeypatch.setenv("BIGQUERY_API_ENDPOINT", proxy.url)
    monkeypatch.setenv("BIGQUERY_DATASET", "jobcfg")
    monkeypatch.setenv("AIRFLOW__COSMOS__IAM_CREDENTIALS_ENDPOINT", iam.url)
    auth.forget_tokens()
    calls = len(iam.calls)
    proxy.reset()

    def inject_faults() -> None:
        # Fault injection: the first two node jobs fail as BigQuery reports a backend error; the profile's
        # job_retries (3, where dbt's default is 1) lets the trigger run that node again twice, as new jobs.
        proxy.add_fault("POST", INSERT, "job_error", count=2, reason="backendError",
                        message="Backend error (injected)")

    with emulator_connections(PROJECT, bigquery_emulator.endpoint, proxy.url, "http://127.0.0.1:9"):
        dag = DbtDag(dag_id=DAG_ID, schedule=None, project_config=ProjectConfig(dbt_project_path=ours),
                     profile_config=ProfileConfig(profile_name="corner_shop", target_name="dev",
                                                  profiles_yml_filepath=ours / "profiles.yml"),
                     execution_config=ExecutionConfig(execution_mode=ExecutionMode.AIRFLOW_ASYNC),
                     operator_args={"poll_interval": 0.05,
                                    "remote_target_path": f"file://{tmp_path / 'remote'}"})
        _dag_run(dag, "manual__jobcfg", after_setup=inject_faults)

    # The node tasks' jobs (the capture's forwarded introspection queries carry dbt's job ids).
    configs: dict[str, Any] = {j: c for j, c in proxy.configs.items() if j.startswith("cosmos_async_")}
    node_tasks = [t for t in dag.dbt_tasks.values() if isinstance(t, DbtBigQueryAsyncOperator)]
    assert proxy.faults_fired == {"job_error": 2}
    retried = sorted(job_id for job_id in configs if not job_id.endswith("_0"))
    assert [j[-2:] for j in retried] == ["_1", "_2"], sorted(configs)  # one step, tried three times
    query_jobs = [c for c in configs.values() if "query" in c]
    assert len(query_jobs) >= len(node_tasks) + 2  # every node task ran at least one query job
    for config in query_jobs:
        query = config["query"]
        assert str(query["maximumBytesBilled"]) == "1000000000", config
        assert query["priority"] == "BATCH" and str(config["jobTimeoutMs"]) == "600000", config
        assert query["useLegacySql"] is False and query["query"].strip()
        labels = config["labels"]
        # Ours, and dbt's: the query comment's (job_label) and its invocation id.
        assert {"airflow_dag", "airflow_task", "airflow_run", "dbt_node"} <= set(labels), labels
        assert labels["team"] == "analytics" and "dbt_invocation_id" in labels
        assert len(labels) <= 64
    # Every request, the capture's and the triggers', acted as the account; only IAM saw the profile's token.
    assert {c["account"] for c in iam.calls[calls:]} == {TARGET_SA}
    assert {c["authorization"] for c in iam.calls[calls:]} == {"Bearer anonymous"}
    assert set(proxy.authorizations) <= {f"Bearer {t}" for t in iam.issued}, set(proxy.authorizations)
    node_labels = {c["labels"]["dbt_node"]: c["labels"].get("node_id") for c in query_jobs}
    assert node_labels["model_corner_shop_customers"] == "model_corner_shop_customers"

    with monkeypatch.context() as mp:
        mp.setenv("BIGQUERY_DATASET", "oracle_jobcfg")
        mp.setenv("BIGQUERY_API_ENDPOINT", bigquery_emulator.endpoint)
        dbt_build(oracle)
    expected = built_tables(client, "oracle_jobcfg")
    assert expected and built_tables(client, "jobcfg") == expected
