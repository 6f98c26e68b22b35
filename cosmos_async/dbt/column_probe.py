"""The columns of a table a node creates and reads back in the same run, told before the table exists.

dbt's snapshot merge (from its staging table) and an incremental model with ``on_schema_change`` (from its temp
table) create a table, then read its columns to write the next statement. The capture runs no write, so the
table is not there; its columns are those of the select it is created from, which BigQuery reports for
``select * from (<select>) where false limit 0`` without reading a row (dbt's own column-schema probe).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from cosmos_async.dbt.sql_relations import Relation

_PROBE_TIMEOUT_S = 300.0


class ProbeError(Exception):
    """BigQuery could not tell the select's columns (its message)."""


def select_columns(http: Any, upstream: str, project: str, select: str, location: str | None,
                   headers: Mapping[str, str]) -> list[dict[str, Any]]:
    """The schema fields of ``select``'s result, from a query that returns no rows (``jobs.query``, polled with
    ``jobs.getQueryResults`` until complete); ``http`` is a ``requests.Session``, ``headers`` carry dbt's auth."""
    base = f"{upstream}/bigquery/v2/projects/{quote(project, safe='')}/queries"
    body: dict[str, Any] = {"query": f"select * from (\n{select}\n) as __cosmos_async_probe where false limit 0",
                            "useLegacySql": False, "maxResults": 0, "timeoutMs": 10_000}
    if location:
        body["location"] = location
    deadline = time.monotonic() + _PROBE_TIMEOUT_S
    result = _answer(http.post(base, json=body, headers=headers, timeout=60))
    while not result.get("jobComplete"):
        ref = result.get("jobReference") or {}
        if not ref.get("jobId") or time.monotonic() > deadline:
            raise ProbeError("the column probe did not complete")
        params = {"maxResults": 0, "timeoutMs": 10_000, **({"location": ref["location"]} if ref.get("location")
                                                            else {})}
        result = _answer(http.get(f"{base}/{quote(ref['jobId'], safe='')}", params=params, headers=headers,
                                  timeout=60))
    return list((result.get("schema") or {}).get("fields") or [])


def _answer(resp: Any) -> dict[str, Any]:
    try:
        payload = resp.json()
    except ValueError:
        payload = {}
    error = payload.get("error") if isinstance(payload, dict) else None
    if not resp.ok or error:
        message = (error or {}).get("message") if isinstance(error, dict) else None
        raise ProbeError(message or f"HTTP {resp.status_code}")
    return payload


def table_resource(table: Relation, fields: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``tables.get`` answer for ``table`` holding ``fields``, as if it had been created."""
    assert table.dataset is not None and table.table is not None
    return {"kind": "bigquery#table", "id": f"{table.project}:{table.dataset}.{table.table}", "type": "TABLE",
            "tableReference": {"projectId": table.project, "datasetId": table.dataset, "tableId": table.table},
            "schema": {"fields": fields}}
