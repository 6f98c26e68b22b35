"""What a source task checks: dbt's freshness rules of one source and how long to wait for late data.

The result travels in the trigger's kwargs (names and numbers only, no SQL, no secret). Waiting is configured
per DAG with ``operator_args={"source_freshness_wait": {"interval_minutes": 5, "timeout_minutes": 120}}`` and
per source in its ``meta``: ``meta: {cosmos_async: {freshness_wait: {interval_minutes: 5, timeout_minutes: 60}}}``
(``freshness_wait: null`` there turns a DAG-wide wait off for that source).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cosmos_async.errors import ConfigurationError
from cosmos_async.project.manifest import DbtNode

# dbt's freshness periods (dbt.artifacts.resources.v1.components.Time).
PERIOD_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
_WAIT_KEYS = frozenset({"interval_minutes", "timeout_minutes"})


def threshold(rule: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``{"count": 1, "period": "hour"}`` → ``{"seconds": 3600, "text": "1 hour"}``; None when unset."""
    if not rule or not rule.get("count") or not rule.get("period"):
        return None
    count, period = int(rule["count"]), str(rule["period"])
    if period not in PERIOD_SECONDS:
        raise ConfigurationError(f"freshness period {period!r}: dbt accepts minute, hour or day.")
    return {"seconds": count * PERIOD_SECONDS[period], "text": f"{count} {period}{'' if count == 1 else 's'}"}


def freshness_wait(value: Any, where: str) -> dict[str, float] | None:
    """A checked wait setting (minutes → seconds), or None for no wait."""
    if value is None or value is False:
        return None
    if not isinstance(value, Mapping) or not set(value) <= _WAIT_KEYS or "timeout_minutes" not in value:
        raise ConfigurationError(f"{where} must be a mapping like {{'interval_minutes': 5, 'timeout_minutes': 120}} "
                                 f"(re-check every 5 minutes for up to 2 hours); got {value!r}.")
    try:
        timeout = float(value["timeout_minutes"]) * 60
        interval = float(value.get("interval_minutes", 5)) * 60
    except (TypeError, ValueError):
        raise ConfigurationError(f"{where}: interval_minutes and timeout_minutes must be numbers; "
                                 f"got {value!r}.") from None
    if interval <= 0 or timeout < 0:
        raise ConfigurationError(f"{where}: interval_minutes must be > 0 and timeout_minutes >= 0; got {value!r}.")
    return {"interval_s": interval, "timeout_s": timeout}


def source_check(node: DbtNode, dag_wait: Any) -> dict[str, Any]:
    """The trigger's view of one source: its name, relation, loaded_at_field, thresholds and wait."""
    rules = node.freshness or {}
    own = (node.meta.get("cosmos_async") or {}) if isinstance(node.meta.get("cosmos_async"), Mapping) else {}
    if "freshness_wait" in own:
        wait = freshness_wait(own["freshness_wait"], f"meta.cosmos_async.freshness_wait of {node.unique_id}")
    else:
        wait = freshness_wait(dag_wait, "operator_args source_freshness_wait")
    return {
        "source": f"{node.source_name}.{node.name}",
        "relation": {"project": node.database, "dataset": node.schema, "table": node.alias or node.name},
        "loaded_at_field": node.loaded_at_field,
        "warn_after": threshold(rules.get("warn_after")),
        "error_after": threshold(rules.get("error_after")),
        "wait": wait,
    }
