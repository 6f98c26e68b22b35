"""The job configuration a trigger submits, built from what the capture recorded; the profile's retry fields."""

from __future__ import annotations

import pytest
from cosmos_async_triggers.job_config import MAX_LABELS, merge_labels, query_configuration
from cosmos_async_triggers.job_retry import JobRetry, JobRetrySettingError

from cosmos_async.capture import NodeCapture, ScriptCapture, replayable_configuration

DBT_BODY = {"dryRun": False, "jobTimeoutMs": "600000", "labels": {"dbt_invocation_id": "abc", "team": "x"},
            "query": {"query": "create table t as select 1", "useLegacySql": False, "priority": "BATCH",
                      "maximumBytesBilled": "1000"}}


def test_capture_keeps_dbts_configuration_without_the_sql_and_dry_run() -> None:
    kept = replayable_configuration(DBT_BODY)
    assert kept == {"jobTimeoutMs": "600000", "labels": {"dbt_invocation_id": "abc", "team": "x"},
                    "query": {"useLegacySql": False, "priority": "BATCH", "maximumBytesBilled": "1000"}}
    assert "query" in DBT_BODY["query"]  # the body dbt sent is left as it was


def test_replayed_configuration_has_our_sql_and_labels_winning_on_our_keys() -> None:
    config, dropped = query_configuration(replayable_configuration(DBT_BODY), "select 2",
                                          {"team": "ours", "airflow_dag": "d"})
    assert config["query"] == {"query": "select 2", "useLegacySql": False, "priority": "BATCH",
                               "maximumBytesBilled": "1000"}
    assert config["labels"] == {"team": "ours", "airflow_dag": "d", "dbt_invocation_id": "abc"}
    assert config["jobTimeoutMs"] == "600000" and dropped == []
    plain, _ = query_configuration({}, "select 3", {"a": "b"})  # an index from before configurations
    assert plain == {"query": {"query": "select 3", "useLegacySql": False}, "labels": {"a": "b"}}


def test_labels_stay_within_bigquerys_limit_ours_first() -> None:
    ours = {f"o{i}": "v" for i in range(60)}
    dbt = {f"d{i}": "v" for i in range(10)}
    merged, dropped = merge_labels(dbt, ours)
    assert len(merged) == MAX_LABELS and set(ours) <= set(merged)
    assert dropped == [f"d{i}" for i in range(4, 10)]


def test_scripts_split_where_dbt_changed_the_configuration() -> None:
    a, b = {"query": {"priority": "BATCH"}}, {"query": {"priority": "INTERACTIVE"}}
    node = NodeCapture(["create schema s", "q1", "q2", "q3"], configurations=[None, a, a, b])
    assert node.steps() == [ScriptCapture(["create schema s", "q1", "q2"], a), ScriptCapture(["q3"], b)]
    assert NodeCapture(["q1", "q2"]).steps() == [ScriptCapture(["q1", "q2"], {})]


def test_job_retry_fields_as_dbt_bigquery_reads_them() -> None:
    assert JobRetry.from_settings({}) == JobRetry(1, None)  # dbt-bigquery's default: one retry
    assert JobRetry.from_settings({"retries": "4"}).retries == 4  # its older name
    assert JobRetry.from_settings({"job_retries": "0", "job_retry_deadline_seconds": "30"}) == JobRetry(0, 30.0)
    assert JobRetry(2).delay(3, 0.0) is None and JobRetry(2).delay(1, 0.0) is not None
    assert JobRetry(5, 1.0).delay(1, 0.9) is None
    with pytest.raises(JobRetrySettingError, match="job_retries must be an integer"):
        JobRetry.from_settings({"job_retries": "three"})


def test_a_step_joins_the_session_an_earlier_step_of_the_run_created() -> None:
    from cosmos_async_triggers.job_config import in_session, session_of

    captured = {"query": {}, "connectionProperties": [{"key": "session_id", "value": "capture-session"},
                                                      {"key": "time_zone", "value": "UTC"}]}
    assert in_session(captured, "live") == {"query": {}, "connectionProperties": [
        {"key": "session_id", "value": "live"}, {"key": "time_zone", "value": "UTC"}]}
    assert in_session(captured, None) == captured
    assert session_of({"statistics": {"sessionInfo": {"sessionId": "live"}}}) == "live"
    assert session_of({"statistics": {}}) is None
