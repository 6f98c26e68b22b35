"""JSON over HTTP for the Google REST APIs: one shared aiohttp session per event loop, bounded retries.

Every trigger in a triggerer process runs on the same event loop, so they all share one session and one
connection pool (a session per trigger would open a pool, and TLS handshakes, per trigger).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from cosmos_async_triggers.bq_errors import http_retryable

_sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
_created = 0


class BigQueryApiError(Exception):
    """A Google API answered with a permanent error (or kept failing after the retries)."""

    def __init__(self, status: int | None, reason: str, message: str, *, method: str = "", url: str = "") -> None:
        self.status = status
        self.reason = reason
        self.message = message
        self.method = method
        self.url = url
        where = f" ({method} {url})" if url else ""
        super().__init__(f"HTTP {status if status is not None else '-'} {reason}: {message}{where}")


def configured_max_retry_sleep() -> float:
    """``[cosmos] http_retry_max_sleep`` (env ``AIRFLOW__COSMOS__HTTP_RETRY_MAX_SLEEP``): the backoff budget of one
    request, in seconds."""
    try:
        from airflow.configuration import conf
    except ImportError:  # used without Airflow (e.g. a benchmark harness): the documented default
        return 30.0
    return conf.getfloat("cosmos", "http_retry_max_sleep", fallback=30.0)


@dataclass(frozen=True)
class RetryPolicy:
    """Full-jitter exponential backoff, bounded by attempts and by the total time spent sleeping."""

    attempts: int = 8
    base_s: float = 0.25
    cap_s: float = 8.0
    max_total_sleep_s: float = field(default_factory=configured_max_retry_sleep)

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap_s, self.base_s * 2**attempt))


DEFAULT_RETRY = RetryPolicy()


def get_session() -> aiohttp.ClientSession:
    """The running loop's shared session, created on first use."""
    global _created
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None or session.closed:
        # Forget sessions of loops that are gone (tests run many loops; a triggerer runs one).
        for old in [lp for lp in _sessions if lp.is_closed()]:
            del _sessions[old]
        connector = aiohttp.TCPConnector(limit=100, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=120, sock_connect=15)
        session = _sessions[loop] = aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=True)
        _created += 1
    return session


def sessions_created() -> int:
    """How many sessions this process has created (tests check that triggers share one)."""
    return _created


async def close_session() -> None:
    """Close the running loop's session (tests; a triggerer keeps its session for its lifetime)."""
    session = _sessions.pop(asyncio.get_running_loop(), None)
    if session is not None:
        await session.close()


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def request(method: str, url: str, *, token: str | None, json: Any = None,
                  params: dict[str, Any] | None = None, retry: RetryPolicy = DEFAULT_RETRY,
                  data: bytes | None = None, content_type: str | None = None) -> tuple[int, bytes]:
    """Send a request, retrying transient failures; return (status, body) of a 2xx answer.

    The body is ``json`` or raw ``data`` with its ``content_type`` (uploads).

    Answers :func:`~cosmos_async_triggers.bq_errors.http_retryable` refuses (a permanent reason, a 4xx) raise
    :class:`BigQueryApiError` at once (callers check ``.status``, e.g. 404/409).
    """
    session = get_session()
    slept = 0.0
    last: BigQueryApiError | None = None
    for attempt in range(retry.attempts):
        retry_after: float | None = None
        try:
            headers = {**_headers(token), **({"Content-Type": content_type} if content_type else {})}
            async with session.request(method, url, json=json, data=data, params=params, headers=headers) as resp:
                body = await resp.read()
                if resp.status < 300:
                    return resp.status, body
                error = _api_error(resp.status, body, method, url)
                if not http_retryable(error.status, error.reason):
                    raise error
                last = error
                retry_after = _retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError) as exc:
            last = BigQueryApiError(None, type(exc).__name__, str(exc) or "connection failed", method=method, url=url)
        if attempt + 1 == retry.attempts:
            break
        delay = max(retry.delay(attempt), retry_after or 0.0)
        if slept + delay > retry.max_total_sleep_s:
            break
        slept += delay
        await asyncio.sleep(delay)
    assert last is not None
    raise BigQueryApiError(last.status, last.reason, f"{last.message} (gave up after {attempt + 1} attempts, "
                           f"{slept:.1f}s of backoff)", method=method, url=url)


async def request_json(method: str, url: str, *, token: str | None, json: Any = None,
                       params: dict[str, Any] | None = None, retry: RetryPolicy = DEFAULT_RETRY,
                       data: bytes | None = None, content_type: str | None = None) -> dict[str, Any]:
    """:func:`request`, decoding a JSON object body (an empty body gives ``{}``)."""
    import json as jsonlib

    _, body = await request(method, url, token=token, json=json, params=params, retry=retry, data=data,
                            content_type=content_type)
    if not body.strip():
        return {}
    try:
        return jsonlib.loads(body)
    except ValueError:
        raise BigQueryApiError(200, "invalidResponse", f"not JSON: {body[:200]!r}", method=method, url=url) from None


def _retry_after(value: str | None) -> float | None:
    try:
        return min(float(value), 30.0) if value else None
    except ValueError:
        return None  # an HTTP date: ignore it, the backoff still applies


def _api_error(status: int, body: bytes, method: str, url: str) -> BigQueryApiError:
    """Google's error shape: {"error": {"code", "message", "errors": [{"reason", "message"}], "status"}}."""
    import json as jsonlib

    try:
        error = jsonlib.loads(body).get("error") or {}
        if isinstance(error, str):
            return BigQueryApiError(status, "error", error, method=method, url=url)
        details = error.get("errors") or [{}]
        reason = details[0].get("reason") or error.get("status") or "error"
        return BigQueryApiError(status, reason, error.get("message") or body.decode(errors="replace")[:300],
                                method=method, url=url)
    except (ValueError, AttributeError):
        return BigQueryApiError(status, "httpError", body.decode(errors="replace")[:300] or "(empty body)",
                                method=method, url=url)
