"""The job configuration a trigger submits: what dbt-bigquery sent during capture, with our SQL and labels.

The capture records each script's configuration without its SQL text and job id (see
``cosmos_async.capture.replayable_configuration``); here it is completed, never extended with settings dbt did
not ask for. An index written before configurations were recorded gives ``{}``: a plain standard-SQL query.
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
