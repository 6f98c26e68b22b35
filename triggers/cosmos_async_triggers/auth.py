"""Access tokens and endpoints for a ``google_cloud_platform`` Airflow connection, from async code.

google-auth signs and refreshes synchronously (HTTP to the token endpoint), so that work runs in a thread.
Tokens are cached once per process for every trigger, keyed by connection id and scopes, and refreshed
about five minutes before they expire. Neither tokens nor key material ever reach a log line or an exception.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timezone
from typing import Any

DEFAULT_SCOPES: tuple[str, ...] = ("https://www.googleapis.com/auth/cloud-platform",)
DEFAULT_BIGQUERY_ENDPOINT = "https://bigquery.googleapis.com"
DEFAULT_STORAGE_ENDPOINT = "https://storage.googleapis.com"
REFRESH_MARGIN_S = 300.0
_PREFIX = "extra__google_cloud_platform__"


class GcpAuthError(Exception):
    """A connection's credentials cannot be loaded or refreshed (the message never holds key material)."""


def _extra(extras: Mapping[str, Any], key: str) -> Any:
    """An extra in its short form or the legacy ``extra__google_cloud_platform__`` form; '' counts as unset."""
    value = extras.get(key)
    if value in (None, ""):
        value = extras.get(_PREFIX + key)
    return None if value == "" else value


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


@dataclass(frozen=True)
class GcpConnection:
    """What a trigger needs from the connection. ``repr`` leaves the extras (maybe a key) out."""

    conn_id: str
    project: str | None
    bigquery_endpoint: str
    storage_endpoint: str
    anonymous: bool
    scopes: tuple[str, ...]
    extras: Mapping[str, Any] = field(repr=False, compare=False, hash=False)

    @classmethod
    def from_extras(cls, conn_id: str, extras: Mapping[str, Any]) -> GcpConnection:
        scopes = _extra(extras, "scopes") or DEFAULT_SCOPES
        if isinstance(scopes, str):
            scopes = [s.strip() for s in scopes.split(",") if s.strip()]
        return cls(
            conn_id=conn_id,
            project=_extra(extras, "project"),
            bigquery_endpoint=str(_extra(extras, "bigquery_api_endpoint") or DEFAULT_BIGQUERY_ENDPOINT).rstrip("/"),
            storage_endpoint=str(_extra(extras, "storage_api_endpoint") or DEFAULT_STORAGE_ENDPOINT).rstrip("/"),
            anonymous=_truthy(_extra(extras, "anonymous")),
            scopes=tuple(scopes),
            extras=dict(extras),
        )


CONNECTION_TTL_S = 60.0
_connections: dict[str, tuple[float, GcpConnection]] = {}


async def get_connection(conn_id: str) -> GcpConnection:
    """Read the Airflow connection (secrets backends, env vars, or the triggerer's API) without blocking.

    Kept for a minute per process: a thousand triggers starting together ask the API server once, not a
    thousand times; a changed connection is seen within the minute.
    """
    cached = _connections.get(conn_id)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    conn = await _read_connection(conn_id)
    _connections[conn_id] = (time.monotonic() + CONNECTION_TTL_S, conn)
    return conn


async def _read_connection(conn_id: str) -> GcpConnection:
    from airflow.sdk import Connection

    try:
        conn = await Connection.async_get(conn_id)
    except Exception as exc:
        raise GcpAuthError(f"cannot read Airflow connection {conn_id!r}: {type(exc).__name__}: {exc}; create it "
                           "where the triggerer can read it (the metadata database or a secrets backend) or fix "
                           "the conn id the task names") from None
    extras = await conn.aextra_dejson() if hasattr(conn, "aextra_dejson") else conn.extra_dejson
    return GcpConnection.from_extras(conn_id, extras or {})


@dataclass
class _Cached:
    token: str
    expires_at: float  # time.time() seconds; inf when google-auth gives no expiry


# One cache per process, shared by every trigger. The lock is a thread lock because refreshes run in threads
# (and must work from any event loop); reads of a fresh token happen in the loop without it.
_tokens: dict[tuple[str, tuple[str, ...]], _Cached] = {}
_credentials: dict[tuple[str, tuple[str, ...]], Any] = {}
_lock = threading.Lock()


def _fresh(cached: _Cached | None) -> bool:
    return cached is not None and cached.expires_at - REFRESH_MARGIN_S > time.time()


async def get_token(conn: GcpConnection) -> str | None:
    """A bearer token for ``conn``, or None for an anonymous (emulator) connection."""
    if conn.anonymous:
        return None
    key = (conn.conn_id, conn.scopes)
    cached = _tokens.get(key)
    if _fresh(cached):
        return cached.token  # type: ignore[union-attr]
    return await asyncio.to_thread(_refresh_locked, conn, key)


def forget_tokens() -> None:
    """Drop cached connections, tokens and credentials (tests, or after a key was rotated)."""
    _connections.clear()
    with _lock:
        _tokens.clear()
        _credentials.clear()


def _refresh_locked(conn: GcpConnection, key: tuple[str, tuple[str, ...]]) -> str:
    with _lock:
        cached = _tokens.get(key)
        if _fresh(cached):  # another trigger refreshed it while this one waited
            return cached.token  # type: ignore[union-attr]
        creds = _credentials.get(key)
        if creds is None:
            creds = _credentials[key] = _load_credentials(conn)
        failure = None
        try:
            creds.refresh(_transport_request())
        except Exception as exc:
            # Token endpoint errors carry its response (e.g. "invalid_grant"), never the key itself.
            failure = f"{type(exc).__name__}: {str(exc)[:300]}"
        if failure is not None:  # raised outside the except block: no __context__ holding google-auth's objects
            raise GcpAuthError(f"connection {conn.conn_id!r}: cannot get an access token: {failure}. Google refused "
                               "the connection's credentials (a deleted or revoked key, a disabled service account "
                               "or a wrong token_uri): put a valid key into the connection the triggerer reads")
        expiry = getattr(creds, "expiry", None)
        # google-auth's expiry is a naive UTC datetime.
        expires_at = expiry.replace(tzinfo=timezone.utc).timestamp() if expiry else float("inf")
        _tokens[key] = _Cached(creds.token, expires_at)
        return creds.token


def _transport_request() -> Any:
    try:
        import google.auth.transport.requests as transport

        return transport.Request()
    except ImportError:  # requests is optional for google-auth; urllib3 ships with it in practice
        import google.auth.transport.urllib3 as transport_urllib3
        import urllib3

        return transport_urllib3.Request(urllib3.PoolManager())


def _load_credentials(conn: GcpConnection) -> Any:
    """Service-account key (``keyfile_dict`` / ``key_path``), else Application Default Credentials."""
    keyfile = _extra(conn.extras, "keyfile_dict")
    key_path = _extra(conn.extras, "key_path")
    failure = None
    try:
        return _credentials_from(conn, keyfile, key_path)
    except Exception as exc:
        if not keyfile and not key_path:  # ADC errors explain where google-auth looked; no key involved
            failure = (f"connection {conn.conn_id!r} has no keyfile_dict/key_path and Application Default "
                       f"Credentials failed: {type(exc).__name__}: {str(exc).rstrip('.')}. Make them available "
                       "to the triggerer (workload identity, or GOOGLE_APPLICATION_CREDENTIALS naming a key file), "
                       "or put a service-account key into the connection's keyfile_dict")
        else:  # never quote a parse error: it may echo parts of the key
            failure = (f"connection {conn.conn_id!r}: cannot load a service-account key from "
                       f"{'keyfile_dict' if keyfile else 'key_path'} ({type(exc).__name__}); check that it holds "
                       "a service-account key JSON")
    # Raised outside the except block, so no __context__ keeps the original exception (and its arguments).
    raise GcpAuthError(failure)


def _credentials_from(conn: GcpConnection, keyfile: Any, key_path: Any) -> Any:
    from google.oauth2 import service_account

    if keyfile:
        info = json.loads(keyfile) if isinstance(keyfile, str) else dict(keyfile)
        return service_account.Credentials.from_service_account_info(info, scopes=list(conn.scopes))
    if key_path:
        return service_account.Credentials.from_service_account_file(str(key_path), scopes=list(conn.scopes))
    import google.auth

    creds, _ = google.auth.default(scopes=list(conn.scopes))
    return creds
