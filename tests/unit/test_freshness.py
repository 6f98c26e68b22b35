"""dbt's freshness rules as the source trigger applies them, and the wait setting's checks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from cosmos_async_triggers.freshness import judge, parse_timestamp

from cosmos_async.errors import ConfigurationError
from cosmos_async.sources import freshness_wait, threshold

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
NODE = {"id": "source.p.raw.orders", "source": "raw.orders", "loaded_at_field": "loaded_at",
        "warn_after": threshold({"count": 1, "period": "hour"}),
        "error_after": threshold({"count": 1, "period": "day"})}


@pytest.mark.parametrize(("age", "status"), [(timedelta(minutes=59), "pass"), (timedelta(hours=2), "warn"),
                                             (timedelta(hours=25), "error"), (None, "error")])
def test_error_then_warn_then_pass_as_dbt(age, status) -> None:
    verdict = judge(NODE, None if age is None else NOW - age, NOW)
    assert verdict.status == status
    assert verdict.message.startswith({"pass": "PASS", "warn": "WARN", "error": "ERROR STALE"}[status]
                                      + " freshness of raw.orders: max(loaded_at) is ")


def test_rest_timestamps_in_every_shape() -> None:
    assert parse_timestamp("1796126400000000") == NOW  # useInt64Timestamp microseconds
    assert parse_timestamp("1.7961264E9") == NOW
    assert parse_timestamp("2026-12-01T12:00:00Z") == NOW
    assert parse_timestamp(None) is None


def test_wait_settings_are_checked() -> None:
    assert freshness_wait({"interval_minutes": 5, "timeout_minutes": 60}, "x") == {"interval_s": 300, "timeout_s": 3600}
    assert freshness_wait(None, "x") is None
    for bad in ({"interval_minutes": 5}, {"timeout_minutes": "soon"}, {"timeout": 60}, 60,
                {"interval_minutes": 0, "timeout_minutes": 1}):
        with pytest.raises(ConfigurationError, match="x"):
            freshness_wait(bad, "x")
    with pytest.raises(ConfigurationError, match="minute, hour or day"):
        threshold({"count": 1, "period": "week"})


def test_a_sources_own_wait_wins_over_the_dags() -> None:
    from cosmos_async.project.manifest import DbtNode
    from cosmos_async.sources import source_check

    def source(meta: dict) -> DbtNode:
        return DbtNode(unique_id="source.p.raw.orders", resource_type="source", name="orders", package_name="p",
                       original_file_path="", fqn=(), tags=frozenset(), config={}, depends_on=(), source_name="raw",
                       database="proj", schema="raw", loaded_at_field="loaded_at",
                       freshness={"error_after": {"count": 2, "period": "day"}}, meta=meta)

    dag_wait = {"interval_minutes": 5, "timeout_minutes": 60}
    assert source_check(source({}), dag_wait)["wait"] == {"interval_s": 300, "timeout_s": 3600}
    own = source({"cosmos_async": {"freshness_wait": {"interval_minutes": 1, "timeout_minutes": 2}}})
    assert source_check(own, dag_wait)["wait"] == {"interval_s": 60, "timeout_s": 120}
    assert source_check(source({"cosmos_async": {"freshness_wait": None}}), dag_wait)["wait"] is None
    check = source_check(source({}), None)
    assert check["error_after"] == {"seconds": 172800, "text": "2 days"} and check["warn_after"] is None
    assert check["relation"] == {"project": "proj", "dataset": "raw", "table": "orders"}
