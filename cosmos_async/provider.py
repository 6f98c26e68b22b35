"""Airflow provider registration: declares the ``[cosmos]`` configuration section and its options.

Airflow reads this through the ``apache_airflow_provider`` entry point, so ``airflow config list`` documents
the options and ``AIRFLOW__COSMOS__*`` environment variables resolve with their defaults.
"""

from __future__ import annotations

from typing import Any

SECTION = "cosmos"

# name -> (description, type, example, default). Defaults are strings, as Airflow's config parser expects.
OPTIONS: dict[str, tuple[str, str, str | None, str | None]] = {
    "remote_target_path": (
        "fsspec URL under which the setup task uploads each run's compiled SQL "
        "(gs://bucket/prefix in production; file:// works on one machine). Required for AIRFLOW_ASYNC.",
        "string", "gs://my-bucket/cosmos-async", None,
    ),
    "remote_target_path_conn_id": (
        "Airflow connection used to reach remote_target_path (a google_cloud_platform connection for gs://).",
        "string", "google_cloud_default", None,
    ),
    "poll_interval": (
        "Seconds between BigQuery jobs.get calls while a load job runs (the trigger backs off up to 4x this); "
        "query jobs are long-polled through getQueryResults, which answers as the job ends.",
        "float", None, "2.0",
    ),
    "start_from_trigger": (
        "Start AIRFLOW_ASYNC model tasks directly in the triggerer so they hold no worker slot. "
        "Turn off to start each task on a worker, which hands it to the same trigger at once.",
        "boolean", None, "True",
    ),
    "upload_concurrency": (
        "How many SQL files the setup task uploads at once (they go up while dbt captures the next nodes).",
        "integer", None, "32",
    ),
    "cache_dir": (
        "Directory where the manifests produced by `dbt ls` (projects rendered without manifest_path) are cached "
        "by project checksum. Empty means a cosmos_async_cache folder in the system temp directory.",
        "string", "/tmp/cosmos_async_cache", "",
    ),
    "enable_cache_partial_parse": (
        "Keep dbt's partial-parse state (partial_parse.msgpack) under cache_dir between runs of a project, so the "
        "setup task and LOCAL tasks parse only what changed; dbt itself parses in full when the state no longer "
        "fits the project, vars, env vars or profile.",
        "boolean", None, "True",
    ),
    "http_retry_max_sleep": (
        "Seconds a trigger may spend backing off on one BigQuery or storage request that keeps failing with "
        "429/5xx or a dropped connection (at most 8 attempts) before the task fails with the last error.",
        "float", None, "30",
    ),
    "iam_credentials_endpoint": (
        "IAM Credentials API asked for delegated tokens (generateAccessToken) by the triggers, the setup task's "
        "dbt and its storage I/O, for a profiles.yml target's impersonate_service_account or a connection's "
        "impersonation_chain; change it only for a private endpoint or a test double.",
        "string", None, "https://iamcredentials.googleapis.com",
    ),
    "default_location": (
        "BigQuery location used when neither operator_args nor the profile give one.",
        "string", None, "US",
    ),
    "wait_for_parents": (
        "Who releases an AIRFLOW_ASYNC model once its parents succeed: 'triggerer' (every model task of a run "
        "starts in the triggerer with the run and submits its job the moment its parents are done) or "
        "'scheduler' (Airflow's trigger rules, one scheduler and triggerer round trip per dependency). Empty "
        "(the default): 'triggerer', except for tasks started on a worker (start_from_trigger False), an "
        "operator_args trigger_rule other than all_success, and DAGs or task groups of more than 500 node "
        "tasks, which get 'scheduler'. ExecutionMode.WATCHER always uses 'triggerer'; operator_args "
        "wait_for_parents overrides it.",
        "string", "scheduler", "",
    ),
    "max_concurrent_jobs": (
        "At most this many model tasks of one DAG run (or DbtTaskGroup) hold BigQuery jobs at once in one "
        "triggerer process, like dbt's threads. Empty: the profile's threads when waiting in the triggerer, "
        "no cap with 'scheduler'. operator_args max_concurrent_jobs overrides it.",
        "integer", "8", "",
    ),
    "parent_check_interval": (
        "Seconds between the batched state checks of the parents that waiting model tasks cannot hear about "
        "from a trigger in the same triggerer process (parents on workers or in another triggerer).",
        "float", None, "1.0",
    ),
}


def get_provider_info() -> dict[str, Any]:
    """Return the provider metadata Airflow validates at start."""
    return {
        "package-name": "cosmos-async",
        "name": "cosmos-async",
        "description": "Run dbt models on BigQuery from Airflow without holding worker slots.",
        "extra-links": ["cosmos_async.operators.links.BigQueryJobLink"],
        "config": {
            SECTION: {
                "description": "cosmos-async settings (shared with astronomer-cosmos where names coincide).",
                "options": {
                    name: {
                        "description": desc,
                        "version_added": "0.1.0",
                        "type": typ,
                        "example": example,
                        "default": default,
                    }
                    for name, (desc, typ, example, default) in OPTIONS.items()
                },
            }
        },
    }
