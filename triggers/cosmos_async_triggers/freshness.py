"""dbt's source freshness verdict, reproduced: age of the newest row (or of the table's last change) against
``warn_after`` / ``error_after``, worded as ``dbt source freshness`` reports it.

Pure functions: the trigger fetches the two timestamps (the result row of the freshness query dbt generated,
captured at setup, or ``lastModifiedTime`` from tables.get as dbt-bigquery reads it without a loaded_at_field).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

# dbt's words for each status (dbt/task/printer + freshness runner): PASS, WARN, ERROR STALE.
_STATUS_WORDS = {"pass": "PASS", "warn": "WARN", "error": "ERROR STALE"}


@dataclass(frozen=True)
class Verdict:
    """One freshness check of one source."""

    status: str  # pass / warn / error, as in dbt's sources.json
    age_s: float
    message: str


def judge(node: dict[str, Any], max_loaded_at: datetime | None, snapshotted_at: datetime) -> Verdict:
    """The verdict for a source whose newest data is ``max_loaded_at`` (None: no rows, as stale as can be)."""
    age = float("inf") if max_loaded_at is None else (snapshotted_at - max_loaded_at).total_seconds()
    error, warn = node.get("error_after"), node.get("warn_after")
    # dbt (FreshnessThreshold.status): error first, then warn; a threshold is exceeded when age > seconds.
    if error and age > error["seconds"]:
        status, rule = "error", ("error_after", error)
    elif warn and age > warn["seconds"]:
        status, rule = "warn", ("warn_after", warn)
    else:
        status, rule = "pass", None
    field = node.get("loaded_at_field")
    what = f"max({field})" if field else "the table's last modification (metadata: no loaded_at_field)"
    seen = "no rows" if max_loaded_at is None else (
        f"{max_loaded_at.isoformat()}, {_duration(age)} ago ({age:.0f} s) at {snapshotted_at.isoformat()}")
    message = f"{_STATUS_WORDS[status]} freshness of {node.get('source') or node['id']}: {what} is {seen}"
    if rule is not None:
        message += f"; {rule[0]} is {rule[1]['text']} ({rule[1]['seconds']} s)"
    else:
        limits = [f"{k} {node[k]['text']}" for k in ("warn_after", "error_after") if node.get(k)]
        message += f" (within {' and '.join(limits)})" if limits else ""
    return Verdict(status, age, message)


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:  # "30.0 hours" reads better than "1.3 days"
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    if seconds >= 60:
        return f"{seconds / 60:.1f} minutes"
    return f"{seconds:.0f} seconds"


def parse_timestamp(value: Any) -> datetime | None:
    """A TIMESTAMP cell of the REST API (int64 microseconds, float seconds such as ``1.7E9``, or ISO text)."""
    if value is None or value == "":
        return None
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" UTC", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    if text.lstrip("-").isdigit() and abs(number) > 1e14:  # useInt64Timestamp: microseconds
        number /= 1e6
    return datetime.fromtimestamp(number, tz=timezone.utc)


def freshness_row(result: dict[str, Any]) -> tuple[datetime | None, datetime]:
    """(max_loaded_at, snapshotted_at) from the getQueryResults answer of dbt's freshness query."""
    names = [f.get("name", "").lower() for f in result.get("schema", {}).get("fields", [])]
    rows = result.get("rows") or []
    if "max_loaded_at" not in names or "snapshotted_at" not in names or len(rows) != 1:
        raise ValueError(f"the freshness query returned {len(rows)} row(s) with columns {names}; expected one row "
                         "with max_loaded_at, snapshotted_at (dbt's collect_freshness)")
    row = dict(zip(names, (cell.get("v") for cell in rows[0].get("f", [])), strict=False))
    snapshotted = parse_timestamp(row["snapshotted_at"]) or datetime.now(timezone.utc)
    return parse_timestamp(row["max_loaded_at"]), snapshotted
