"""The job configuration a trigger submits: what dbt-bigquery sent during capture, with our SQL and labels.

The capture records each script's configuration without its SQL text and job id (see
``cosmos_async.capture.replayable_configuration``); here it is completed, never extended with settings dbt did
not ask for, except that a session created during capture (which ran nothing) is replaced by the live one. An
index written before configurations were recorded gives ``{}``: a plain standard-SQL query.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# BigQuery accepts at most 64 labels on a job.
MAX_LABELS = 64


def merge_labels(dbt_labels: Mapping[str, str], ours: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """(labels, dbt's keys left out): ours win on our keys; dbt's fill up to :data:`MAX_LABELS`, in dbt's order."""
    merged = dict(ours)
    dropped = []
    for key, value in dbt_labels.items():
        if key in merged:
            continue
        if len(merged) >= MAX_LABELS:
            dropped.append(key)
        else:
            merged[key] = value
    return merged, dropped


def labelled(configuration: Mapping[str, Any], labels: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """(``configuration`` with its labels merged with ``labels``, dbt's label keys left out)."""
    merged, dropped = merge_labels(configuration.get("labels") or {}, labels)
    return {**configuration, "labels": merged}, dropped


def query_configuration(captured: Mapping[str, Any], sql: str,
                        labels: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """(the ``configuration`` of a query job running ``sql`` as dbt-bigquery configured it, labels left out)."""
    query = {**(captured.get("query") or {}), "query": sql}
    query.setdefault("useLegacySql", False)
    return labelled({**captured, "query": query}, labels)


def in_session(configuration: Mapping[str, Any], session_id: str | None) -> dict[str, Any]:
    """``configuration`` joined to the live ``session_id``: dbt's ``session_id`` connection property names the
    session of the capture (which never ran), so it is replaced by the one an earlier step of this run created."""
    properties = configuration.get("connectionProperties")
    if session_id is None or not isinstance(properties, list):
        return dict(configuration)
    joined = [{**p, "value": session_id} if isinstance(p, dict) and p.get("key") == "session_id" else p
              for p in properties]
    return {**configuration, "connectionProperties": joined}


def session_of(job: Mapping[str, Any]) -> str | None:
    """The id of the session a finished job created or ran in (``statistics.sessionInfo``), if any."""
    return ((job.get("statistics") or {}).get("sessionInfo") or {}).get("sessionId")
