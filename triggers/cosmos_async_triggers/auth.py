"""Access tokens and endpoints for the triggers, from an Airflow connection or a dbt profiles.yml target.

Both are a :class:`GcpSource`: where the credentials come from (its ``source`` describes it and keys the caches),
the dbt-bigquery ``method`` they use, and the endpoints. A connection maps to a method (``keyfile_dict`` →
service-account-json, ``key_path`` → service-account, else oauth); a profile target is read and rendered in
this process (:mod:`cosmos_async_triggers.dbt_profile`), so its ``env_var()`` references resolve where the trigger
runs and no secret travels in trigger kwargs.

google-auth signs and refreshes synchronously (HTTP to the token endpoint), so that work runs in a thread;
``impersonate_service_account`` asks the IAM Credentials API over aiohttp. Tokens are cached once per process
for every trigger, keyed by source and scopes, and refreshed about five minutes before they expire. Neither
tokens nor key material ever reach a log line or an exception.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from cosmos_async_triggers import credentials, dbt_profile
from cosmos_async_triggers.dbt_profile import TargetRef

DEFAULT_SCOPES: tuple[str, ...] = ("https://www.googleapis.com/auth/cloud-platform",)
# dbt-bigquery's default scopes for a profile target (BigQueryCredentials.scopes).
DBT_SCOPES: tuple[str, ...] = ("https://www.googleapis.com/auth/bigquery",
                               "https://www.googleapis.com/auth/cloud-platform",
                               "https://www.googleapis.com/auth/drive",
                               "https://www.googleapis.com/auth/userinfo.email")
DEFAULT_BIGQUERY_ENDPOINT = "https://bigquery.googleapis.com"
DEFAULT_STORAGE_ENDPOINT = "https://storage.googleapis.com"
DEFAULT_IAM_CREDENTIALS_ENDPOINT = "https://iamcredentials.googleapis.com"
REFRESH_MARGIN_S = 300.0
_PREFIX = "extra__google_cloud_platform__"
_TRIGGERER_ENV = ("the triggerer's environment (its deployment's environment variables; a task's "
                  "operator_args['env'] and ProjectConfig(env_vars) reach dbt on the worker only)")


class GcpAuthError(Exception):
    """A source's credentials cannot be loaded or refreshed (the message never holds key material)."""


def extra(extras: Mapping[str, Any], key: str) -> Any:
    """An extra in its short form or the legacy ``extra__google_cloud_platform__`` form; '' counts as unset."""
    value = extras.get(key)
    if value in (None, ""):
        value = extras.get(_PREFIX + key)
    return None if value == "" else value


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def impersonation_chain(value: Any) -> tuple[str, ...]:
    """The Google provider's ``impersonation_chain`` extra (one account, a comma-separated chain, or a list):
    the last account is the one acted as, the earlier ones are IAM ``delegates`` in order."""
    if not value:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    return tuple(str(account).strip() for account in value if str(account).strip())


def _scopes(value: Any, default: tuple[str, ...]) -> tuple[str, ...]:
    if not value:
        return default
    if isinstance(value, str):
        value = [s.strip() for s in value.split(",") if s.strip()]
    return tuple(value)


@dataclass(frozen=True)
class GcpSource:
    """What a trigger needs to call Google. ``repr`` leaves the secrets out."""

    source: str  # e.g. "connection 'gcp_conn'": names it in errors and keys the token cache
    project: str | None
    bigquery_endpoint: str
    storage_endpoint: str
    anonymous: bool
    scopes: tuple[str, ...]
    method: str
    uses: str  # how the credentials were chosen, for errors: "uses method oauth"
    fix: str  # what to change when Google refuses the credentials
    impersonate: str | None = None
    location: str | None = None
    delegates: tuple[str, ...] = ()  # accounts between the credentials and ``impersonate``, in order
    secrets: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)

    @classmethod
    def from_extras(cls, conn_id: str, extras: Mapping[str, Any]) -> GcpSource:
        """A ``google_cloud_platform`` connection's extras."""
        keyfile, key_path = extra(extras, "keyfile_dict"), extra(extras, "key_path")
        if keyfile:
            method, secrets, uses = "service-account-json", {"keyfile_json": keyfile}, "keyfile_dict"
        elif key_path:
            method, secrets, uses = "service-account", {"keyfile": key_path}, "key_path"
        else:
            method, secrets = "oauth", {}
            uses = "has no keyfile_dict/key_path, so it uses Application Default Credentials"
        chain = impersonation_chain(extra(extras, "impersonation_chain"))
        uses = uses if method == "oauth" else f"uses its {uses}"
        if chain:
            uses += f" to impersonate {chain[-1]}" + (f" through {', '.join(chain[:-1])}" if chain[:-1] else "")
        return cls(
            source=f"connection {conn_id!r}",
            project=extra(extras, "project"),
            bigquery_endpoint=str(extra(extras, "bigquery_api_endpoint") or DEFAULT_BIGQUERY_ENDPOINT).rstrip("/"),
            storage_endpoint=str(extra(extras, "storage_api_endpoint") or DEFAULT_STORAGE_ENDPOINT).rstrip("/"),
            anonymous=_truthy(extra(extras, "anonymous")),
            scopes=_scopes(extra(extras, "scopes"), DEFAULT_SCOPES),
            method=method,
            uses=uses,
            fix="put a valid key into the connection the triggerer reads",
            impersonate=chain[-1] if chain else None,
            delegates=chain[:-1],
            secrets=secrets,
        )

    @classmethod
    def from_target(cls, ref: TargetRef, target: Mapping[str, Any]) -> GcpSource:
        """A rendered dbt BigQuery target (checked with :func:`dbt_profile.check_target`)."""
        return cls.from_target_fields(f"profiles.yml {ref.describe()}", target)

    @classmethod
    def from_target_fields(cls, source: str, target: Mapping[str, Any]) -> GcpSource:
        """A rendered dbt BigQuery target's fields; ``source`` names where they came from."""
        names = ("keyfile", *dbt_profile.CREDENTIAL_FIELDS)
        project = target.get("execution_project") or target.get("project") or target.get("database")
        return cls(
            source=source,
            project=str(project) if project else None,
            bigquery_endpoint=str(target.get("api_endpoint") or DEFAULT_BIGQUERY_ENDPOINT).rstrip("/"),
            storage_endpoint=DEFAULT_STORAGE_ENDPOINT,
            anonymous=False,
            scopes=_scopes(target.get("scopes"), DBT_SCOPES),
            method=str(target["method"]),
            uses=f"uses method {target['method']}"
            + (f" to impersonate {target['impersonate_service_account']}"
               if target.get("impersonate_service_account") else ""),
            fix=("fix the target, or the environment variables it reads, where the triggerer runs (the key must "
                 "be valid and its token_uri reachable)"),
            impersonate=target.get("impersonate_service_account") or None,
            location=target.get("location") or None,
            secrets={k: target[k] for k in names if target.get(k) not in (None, "")},
        )


SOURCE_TTL_S = 60.0
_sources: dict[str, tuple[float, GcpSource]] = {}


async def _cached_source(key: str, load: Callable[[], Awaitable[GcpSource]]) -> GcpSource:
    """Kept for a minute per process: a thousand triggers starting together read the connection (or the file)
    once, not a thousand times; a change is seen within the minute."""
    cached = _sources.get(key)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    source = await load()
    _sources[key] = (time.monotonic() + SOURCE_TTL_S, source)
    return source


async def get_connection(conn_id: str) -> GcpSource:
    """The Airflow connection (secrets backends, env vars, or the triggerer's API), read without blocking."""
    return await _cached_source(f"connection:{conn_id}", lambda: _read_connection(conn_id))


async def get_profile_target(ref: TargetRef, settings: Mapping[str, Any] | None = None) -> GcpSource:
    """The dbt target ``ref`` names, read from its profiles.yml in a thread and rendered with this process's
    environment; :class:`ProfileTargetError` names the file, the target and the fix.

    ``settings``: the target's public fields as the setup task rendered them (from the run's index); they are
    taken as given, so only the credential fields need this process's environment.
    """
    settings = dict(settings or {})
    key = f"profile:{ref.profiles_yml}:{ref.profile}:{ref.target}:{json.dumps(settings, sort_keys=True)}"
    return await _cached_source(key, lambda: asyncio.to_thread(_read_profile_target, ref, settings))


def _read_profile_target(ref: TargetRef, settings: Mapping[str, Any]) -> GcpSource:
    env = dict(os.environ)
    raw = {k: v for k, v in dbt_profile.read_target(ref).items()
           if k in dbt_profile.TRIGGER_FIELDS and k not in settings}
    target = {**dbt_profile.render_value(raw, env, f"profiles.yml {ref.describe()}", _TRIGGERER_ENV), **settings}
    dbt_profile.check_target(ref, target, env)
    return GcpSource.from_target(ref, target)


async def _read_connection(conn_id: str) -> GcpSource:
    from airflow.sdk import Connection

    try:
        conn = await Connection.async_get(conn_id)
    except Exception as exc:
        raise GcpAuthError(f"cannot read Airflow connection {conn_id!r}: {type(exc).__name__}: {exc}; create it "
                           "where the triggerer can read it (the metadata database or a secrets backend) or fix "
                           "the conn id the task names") from None
    extras = await conn.aextra_dejson() if hasattr(conn, "aextra_dejson") else conn.extra_dejson
    return GcpSource.from_extras(conn_id, extras or {})


@dataclass
class _Cached:
    token: str
    expires_at: float  # time.time() seconds; inf when google-auth gives no expiry


_TokenKey = tuple[str, tuple[str, ...], str]  # (source, scopes, impersonated account or "")

# One cache per process, shared by every trigger. The lock is a thread lock because refreshes run in threads
# (and must work from any event loop); reads of a fresh token happen in the loop without it.
_tokens: dict[_TokenKey, _Cached] = {}
_credentials: dict[_TokenKey, Any] = {}
_lock = threading.Lock()
# Impersonation runs in the loop: one generateAccessToken call per key at a time, per event loop.
_delegations: dict[tuple[asyncio.AbstractEventLoop, _TokenKey], asyncio.Future[str]] = {}


def _fresh(cached: _Cached | None) -> bool:
    return cached is not None and cached.expires_at - REFRESH_MARGIN_S > time.time()


async def get_token(source: GcpSource) -> str | None:
    """A bearer token for ``source`` (delegated when it impersonates), or None for an anonymous connection."""
    if source.anonymous:
        return None
    key: _TokenKey = (source.source, source.scopes, "")
    cached = _tokens.get(key)
    if _fresh(cached):
        token = cached.token  # type: ignore[union-attr]
    else:
        token = await asyncio.to_thread(_refresh_locked, source, key)
    if not source.impersonate:
        return token
    return await _delegated_token(source, token)


def forget_tokens() -> None:
    """Drop cached sources, tokens and credentials (tests, or after a key was rotated)."""
    _sources.clear()
    with _lock:
        _tokens.clear()
        _credentials.clear()


def _refresh_locked(source: GcpSource, key: _TokenKey) -> str:
    with _lock:
        cached = _tokens.get(key)
        if _fresh(cached):  # another trigger refreshed it while this one waited
            return cached.token  # type: ignore[union-attr]
        creds = _credentials.get(key)
        if creds is None:
            creds = _credentials[key] = _load_credentials(source)
        failure = None
        if not creds.valid:  # a static oauth-secrets token is valid as given and cannot be refreshed
            try:
                creds.refresh(transport_request())
            except Exception as exc:
                # Token endpoint errors carry its response (e.g. "invalid_grant"), never the key itself.
                failure = f"{type(exc).__name__}: {str(exc)[:300]}"
        if failure is not None:  # raised outside the except block: no __context__ holding google-auth's objects
            raise GcpAuthError(f"{source.source}: cannot get an access token: {failure}. Google refused the "
                               "credentials (a deleted or revoked key or refresh token, a disabled service account "
                               f"or a wrong token_uri): {source.fix}")
        expiry = getattr(creds, "expiry", None)
        # google-auth's expiry is a naive UTC datetime.
        expires_at = expiry.replace(tzinfo=timezone.utc).timestamp() if expiry else float("inf")
        _tokens[key] = _Cached(creds.token, expires_at)
        return creds.token


def transport_request() -> Any:
    try:
        import google.auth.transport.requests as transport

        return transport.Request()
    except ImportError:  # requests is optional for google-auth; urllib3 ships with it in practice
        import google.auth.transport.urllib3 as transport_urllib3
        import urllib3

        return transport_urllib3.Request(urllib3.PoolManager())


def _load_credentials(source: GcpSource) -> Any:
    try:
        return credentials.build(source.method, source.secrets, source.scopes)
    except credentials.CredentialsError as exc:
        failure = f"{source.source} {source.uses}: {exc}"
    raise GcpAuthError(failure)  # outside the except block: no context holding key material


def iam_credentials_endpoint() -> str:
    """``[cosmos] iam_credentials_endpoint`` (env ``AIRFLOW__COSMOS__IAM_CREDENTIALS_ENDPOINT``), else Google's."""
    try:
        from airflow.configuration import conf
    except ImportError:  # used without Airflow
        return DEFAULT_IAM_CREDENTIALS_ENDPOINT
    value = conf.get("cosmos", "iam_credentials_endpoint", fallback=None)
    return str(value or DEFAULT_IAM_CREDENTIALS_ENDPOINT).rstrip("/")


def generate_access_token_url(account: str) -> str:
    """IAM Credentials ``generateAccessToken`` of ``account`` at :func:`iam_credentials_endpoint` (also the
    ``iam_endpoint_override`` the worker side gives google-auth, so both sides ask the same endpoint)."""
    from urllib.parse import quote

    return (f"{iam_credentials_endpoint()}/v1/projects/-/serviceAccounts/{quote(account, safe='@.')}"
            ":generateAccessToken")


def impersonation_refused(source: str, account: str, delegates: tuple[str, ...], detail: str) -> str:
    """The one message for a refused impersonation: who asked, for which account, and the role that is missing."""
    chain = [*delegates, account]
    hops = ("the credentials need it on " + chain[0] + ", and each account of the chain on the next one"
            if delegates else f"the credentials need it on {account}")
    return (f"{source}: cannot impersonate {account}: {detail.rstrip('.')}. Grant roles/iam.serviceAccountTokenCreator "
            f"({hops}), or remove the impersonation from {source}")


async def _delegated_token(source: GcpSource, source_token: str | None) -> str:
    """A token of ``source.impersonate`` from IAM Credentials ``generateAccessToken``, cached like the others."""
    key: _TokenKey = (source.source, source.scopes, str(source.impersonate))
    cached = _tokens.get(key)
    if _fresh(cached):
        return cached.token  # type: ignore[union-attr]
    slot = (asyncio.get_running_loop(), key)
    pending = _delegations.get(slot)
    while pending is not None:  # another trigger is asking already: share its answer
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            if not pending.cancelled():
                raise  # this trigger itself was cancelled
        pending = _delegations.get(slot)  # the asking trigger was cancelled: ask (or wait for the next asker)
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    _delegations[slot] = future
    try:
        token = await _generate_access_token(source, source_token)
    except Exception as exc:
        future.set_exception(exc)
        future.exception()  # retrieved: waiting triggers get it; none waiting is no "never retrieved" warning
        raise
    except BaseException:
        future.cancel()
        raise
    else:
        future.set_result(token)
    finally:
        del _delegations[slot]
    return token


async def _generate_access_token(source: GcpSource, source_token: str | None) -> str:
    from cosmos_async_triggers import rest

    account = str(source.impersonate)
    body: dict[str, Any] = {"scope": list(source.scopes), "lifetime": "3600s"}
    if source.delegates:
        body["delegates"] = [f"projects/-/serviceAccounts/{d}" for d in source.delegates]
    try:
        answer = await rest.request_json("POST", generate_access_token_url(account), token=source_token, json=body)
    except rest.BigQueryApiError as exc:
        failure = impersonation_refused(source.source, account, source.delegates,
                                        f"HTTP {exc.status} {exc.reason}: {exc.message[:300]}")
    else:
        token = answer.get("accessToken")
        if token:
            expire = _expire_time(answer.get("expireTime"))
            with _lock:
                _tokens[(source.source, source.scopes, account)] = _Cached(str(token), expire)
            return str(token)
        failure = f"{source.source}: generateAccessToken for {account} answered without an accessToken"
    raise GcpAuthError(failure)


def _expire_time(value: Any) -> float:
    """RFC 3339 ``expireTime`` as time.time() seconds; an hour from now when it is missing or unreadable."""
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time() + 3600.0
