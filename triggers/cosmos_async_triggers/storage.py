"""Read a run's index and node scripts from the remote target path (``gs://`` or ``file://``).

The setup task wrote them (see :mod:`cosmos_async_triggers.layout`); every script and every load job's data
file is checked against the sha256 recorded in the index, so a trigger never submits SQL or data other than
what setup captured.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cosmos_async_triggers import rest
from cosmos_async_triggers.auth import GcpSource
from cosmos_async_triggers.layout import index_path, run_prefix

INDEX_VERSION = 1
# Version 2 adds node entries with "steps" (scripts and load jobs); every version-1 index is also valid here.
SUPPORTED_VERSIONS = (1, 2)
_RERUN = "re-run the setup task (clear it together with this task) so it uploads the run's SQL again"


class RemoteReadError(Exception):
    """The run's index or a node's script is missing, unreadable or not what the index recorded."""


class RemoteNotFound(RemoteReadError):
    """The object or file does not exist."""


async def read_bytes(url: str, *, conn: GcpSource | None, token_for: Callable[[], Awaitable[str | None]]
                     ) -> bytes:
    """The bytes at ``url``. ``token_for`` gives a bearer token for ``gs://`` (only called for it)."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme in ("gs", "gcs"):
        if conn is None:
            raise RemoteReadError(f"{url}: a gs:// remote target path needs a google_cloud_platform connection")
        return await _read_gcs(url, conn, await token_for())
    if scheme == "file":
        return await asyncio.to_thread(_read_file, url)
    if scheme == "memory":
        raise RemoteReadError(f"{url}: a memory:// remote target path lives in the setup task's process and cannot "
                              "be read by the triggerer; use gs:// (or file:// on a shared disk).")
    raise RemoteReadError(f"{url}: unsupported remote target path scheme {scheme!r}; use gs:// or file://")


def _read_file(url: str) -> bytes:
    # Strip the scheme exactly as fsspec (the writer) does: no URL-decoding, no netloc.
    path = Path(url[len("file://"):])
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise RemoteNotFound(f"{url}: no such file") from None
    except OSError as exc:
        raise RemoteReadError(f"{url}: {type(exc).__name__}: {exc.strerror or exc}") from None


async def _read_gcs(url: str, conn: GcpSource, token: str | None) -> bytes:
    bucket, _, name = url.split("://", 1)[1].partition("/")
    if not bucket or not name:
        raise RemoteReadError(f"{url}: not a gs://bucket/object path")
    api = f"{conn.storage_endpoint}/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"
    try:
        _, body = await rest.request("GET", api, token=token, params={"alt": "media"})
    except rest.BigQueryApiError as exc:
        if exc.status == 404:
            raise RemoteNotFound(f"{url}: no such object") from None
        raise RemoteReadError(f"{url}: {exc}") from None
    return body


async def read_index(remote_target_path: str, dag_id: str, run_id: str, *, conn: GcpSource | None,
                     token_for: Callable[[], Awaitable[str | None]],
                     group_id: str | None = None, relpath: str | None = None) -> tuple[str, dict[str, Any]]:
    """(run prefix, parsed index) of this DAG run, or of this task group's part of it; ``relpath``: another index
    of the run (one task's recompiled nodes, see :func:`cosmos_async_triggers.layout.recompiled_dir`)."""
    prefix = run_prefix(remote_target_path, dag_id, run_id, group_id)
    url = f"{prefix}/{relpath}" if relpath else index_path(prefix)
    try:
        data = await read_bytes(url, conn=conn, token_for=token_for)
    except RemoteNotFound:
        raise RemoteReadError(f"no index at {url}: the setup task has not uploaded this run's SQL (or teardown "
                              f"already removed it); {_RERUN}.") from None
    try:
        index = json.loads(data)
    except ValueError:
        raise RemoteReadError(f"{url} is not valid JSON; {_RERUN}.") from None
    if (not isinstance(index, dict) or index.get("version") not in SUPPORTED_VERSIONS
            or not isinstance(index.get("nodes"), dict)):
        versions = " or ".join(map(str, SUPPORTED_VERSIONS))
        raise RemoteReadError(f"{url} is not a cosmos-async index of version {versions}; {_RERUN} with the same "
                              "cosmos-async version as the triggerer.")
    if (index.get("dag_id"), index.get("run_id"), index.get("group_id")) != (dag_id, run_id, group_id):
        owner = "/".join(str(index.get(k)) for k in ("dag_id", "run_id", "group_id") if index.get(k) is not None)
        wanted = "/".join(v for v in (dag_id, run_id, group_id) if v is not None)
        raise RemoteReadError(f"{url} belongs to {owner}, not {wanted}")
    return prefix, index


@dataclass
class Step:
    """One job of a node: a script (``query``) or a load job of ``data`` (``load``), with the job ``configuration``
    dbt-bigquery sent (for a script: without its SQL; {} from an index written before configurations were)."""

    kind: str
    sql: str = ""
    configuration: dict[str, Any] = field(default_factory=dict)
    data: bytes = b""


async def _read_verified(prefix: str, node_id: str, entry: dict[str, Any], what: str, *, conn: GcpSource | None,
                         token_for: Callable[[], Awaitable[str | None]]) -> bytes:
    """The file at ``entry['path']``, verified against ``entry['sha256']``."""
    rel = entry.get("path")
    if not isinstance(rel, str) or not rel or rel.startswith("/") or ".." in rel.split("/"):
        raise RemoteReadError(f"index entry for {node_id} has no valid 'path' ({rel!r}); {_RERUN}.")
    url = f"{prefix}/{rel}"
    try:
        data = await read_bytes(url, conn=conn, token_for=token_for)
    except RemoteNotFound:
        raise RemoteReadError(f"the {what} of {node_id} is missing at {url}; {_RERUN}.") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.get("sha256"):
        raise RemoteReadError(f"the {what} of {node_id} at {url} does not match the index (sha256 {digest[:12]}…, "
                              f"expected {str(entry.get('sha256'))[:12]}…): it was changed after setup; {_RERUN}.")
    return data


async def read_node_sql(prefix: str, node_id: str, entry: dict[str, Any], *, conn: GcpSource | None,
                        token_for: Callable[[], Awaitable[str | None]]) -> str:
    """A one-script node's script, verified against the index's sha256."""
    data = await _read_verified(prefix, node_id, entry, "SQL", conn=conn, token_for=token_for)
    return data.decode("utf-8")


async def read_node_steps(prefix: str, node_id: str, entry: dict[str, Any], *, conn: GcpSource | None,
                          token_for: Callable[[], Awaitable[str | None]]) -> list[Step]:
    """A node's jobs in order, every file verified; an entry without ``steps`` is one script."""
    if "steps" not in entry:
        sql = await read_node_sql(prefix, node_id, entry, conn=conn, token_for=token_for)
        return [Step("query", sql=sql, configuration=_script_configuration(node_id, entry))]
    if not isinstance(entry["steps"], list):
        raise RemoteReadError(f"index entry for {node_id} has invalid 'steps'; {_RERUN}.")
    steps = []
    for step in entry["steps"]:
        kind = step.get("kind") if isinstance(step, dict) else None
        if kind == "query":
            data = await _read_verified(prefix, node_id, step, "SQL", conn=conn, token_for=token_for)
            steps.append(Step("query", sql=data.decode("utf-8"), configuration=_script_configuration(node_id, step)))
        elif kind == "load" and isinstance(step.get("configuration"), dict) and "load" in step["configuration"]:
            data = await _read_verified(prefix, node_id, step, "load data", conn=conn, token_for=token_for)
            steps.append(Step("load", configuration=step["configuration"], data=data))
        else:
            raise RemoteReadError(f"index entry for {node_id} has a step this triggerer cannot run ({kind!r}); "
                                  f"{_RERUN} with the same cosmos-async version as the triggerer.")
    return steps


def _script_configuration(node_id: str, entry: dict[str, Any]) -> dict[str, Any]:
    configuration = entry.get("configuration", {})
    if not isinstance(configuration, dict) or not isinstance(configuration.get("query", {}), dict):
        raise RemoteReadError(f"index entry for {node_id} has an invalid job 'configuration'; {_RERUN}.")
    return configuration
