"""The columns of a select, from BigQuery, without reading a row.

dbt's snapshot merge (from its staging table) and an incremental model with ``on_schema_change`` (from its temp
table) create a table, then read its columns to write the next statement. The capture runs no write, so the
table is not there; its columns are those of the select it is created from, which BigQuery reports for
``select * from (<select>) where false limit 0`` (dbt's own column-schema probe). A snapshot's own probe is
asked the same way, so that a query failing late (at its results, as real BigQuery fails it) is told apart from
one that reads a relation not built yet.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from cosmos_async.dbt.sql_relations import Relation

_PROBE_TIMEOUT_S = 300.0


class ProbeError(Exception):
    """BigQuery could not tell the select's columns (its message); ``not_found`` when a relation it reads is not
    there."""

    def __init__(self, message: str, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


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
    payload = payload if isinstance(payload, dict) else {}
    error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
    details = [e for e in error.get("errors") or [] if isinstance(e, dict)]
    if resp.ok and not error and payload.get("jobComplete") and not (payload.get("schema") or {}).get("fields"):
        # A finished query without columns that lists errors failed (a select always has a column).
        details = [e for e in payload.get("errors") or [] if isinstance(e, dict)]
    if resp.ok and not error and not details:
        return payload
    message = str(error.get("message") or next((e.get("message") for e in details if e.get("message")), None)
                  or f"HTTP {resp.status_code}")
    # A job that is gone is not a relation that is missing.
    missing = (resp.status_code == 404 or any(e.get("reason") == "notFound" for e in details)) and \
        not message.lower().startswith("not found: job")
    raise ProbeError(message, not_found=missing)


def table_resource(table: Relation, fields: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``tables.get`` answer for ``table`` holding ``fields``, as if it had been created."""
    assert table.dataset is not None and table.table is not None
    return {"kind": "bigquery#table", "id": f"{table.project}:{table.dataset}.{table.table}", "type": "TABLE",
            "tableReference": {"projectId": table.project, "datasetId": table.dataset, "tableId": table.table},
            "schema": {"fields": fields}}
