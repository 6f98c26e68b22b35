"""Acting as another service account on the worker side: the setup task's dbt capture and gcsfs in setup/teardown.

The triggers ask IAM Credentials over aiohttp (:mod:`cosmos_async_triggers.auth`); here google-auth's
``impersonated_credentials`` does the same call, at the same endpoint (``[cosmos] iam_credentials_endpoint``,
through :func:`~cosmos_async_triggers.auth.generate_access_token_url`), with the source credentials built by the
triggers' own :mod:`~cosmos_async_triggers.credentials`. A refusal reads as on the trigger side
(:func:`~cosmos_async_triggers.auth.impersonation_refused`). Tokens never reach a log line or an exception.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cosmos_async_triggers import auth, credentials, dbt_profile

from cosmos_async.errors import ConfigurationError, CosmosAsyncError


class ImpersonationError(CosmosAsyncError):
    """Google refused to let the credentials act as the account (or the source credentials failed)."""


def impersonated_credentials(source: auth.GcpSource, scopes: tuple[str, ...]) -> Any:
    """google-auth credentials of ``source.impersonate`` (through ``source.delegates``), already refreshed."""
    from google.auth import impersonated_credentials as impersonated

    account = str(source.impersonate)
    try:
        base = credentials.build(source.method, source.secrets, auth.DEFAULT_SCOPES)
    except credentials.CredentialsError as exc:
        failure = f"{source.source} {source.uses}: {exc}"
    else:
        creds = impersonated.Credentials(
            source_credentials=base, target_principal=account, target_scopes=list(scopes),
            delegates=[f"projects/-/serviceAccounts/{d}" for d in source.delegates],
            iam_endpoint_override=auth.generate_access_token_url(account))
        failure = _refresh(creds, source, account)
        if failure is None:
            return creds
    raise ImpersonationError(failure)  # outside the except blocks: no context holding google-auth's objects


def _refresh(creds: Any, source: auth.GcpSource, account: str) -> str | None:
    """None when ``creds`` refreshed, else the message saying why not (IAM's answer, never a token)."""
    from google.auth import exceptions

    try:
        creds.refresh(auth.transport_request())
    except exceptions.RefreshError as exc:
        # google-auth's args: (its own words, IAM's JSON answer); told as the triggers tell IAM's error.
        return auth.impersonation_refused(source.source, account, source.delegates, _iam_error(exc.args))
    except exceptions.GoogleAuthError as exc:
        return f"{source.source}: cannot impersonate {account}: {type(exc).__name__}: {str(exc)[:300]}"
    return None


def _iam_error(args: tuple[Any, ...]) -> str:
    """``HTTP <code> <status>: <message>`` from IAM's JSON error in a RefreshError's args, else the args."""
    for arg in args:
        try:
            error = json.loads(arg)["error"]
            return f"HTTP {error['code']} {error.get('status', '')}: {error.get('message', '')}"[:400]
        except (TypeError, ValueError, KeyError):
            continue
    return " ".join(str(a) for a in args)[:400]


def single_account(conn_id: str, extras: Mapping[str, Any]) -> str | None:
    """The account dbt acts as for the connection's ``impersonation_chain`` (None without one).

    dbt-bigquery's ``impersonate_service_account`` takes one account and no delegates, so a chain fails here,
    naming the connection and the fix, rather than in dbt.
    """
    chain = auth.impersonation_chain(auth.extra(extras, "impersonation_chain"))
    if len(chain) > 1:
        raise ConfigurationError(
            f"connection {conn_id!r}: impersonation_chain names {len(chain)} accounts ({', '.join(chain)}), but dbt "
            "acts as a single account (dbt-bigquery's impersonate_service_account has no delegates): set "
            f"impersonation_chain to {chain[-1]} alone and grant the connection's credentials "
            f"roles/iam.serviceAccountTokenCreator on it directly.")
    return chain[0] if chain else None


def dbt_target_acting_as(target: Mapping[str, Any], source_name: str) -> dict[str, Any]:
    """``target`` with its ``impersonate_service_account`` resolved to a delegated token (``oauth-secrets``).

    dbt-bigquery always asks Google's own IAM endpoint; resolving here honours ``[cosmos]
    iam_credentials_endpoint`` as the triggers do, and the token outlives a capture run (an hour).
    """
    account = target.get("impersonate_service_account")
    if not account:
        return dict(target)
    source = auth.GcpSource.from_target_fields(source_name, target)
    token = impersonated_credentials(source, source.scopes).token
    kept = {k: v for k, v in target.items()
            if k not in ("impersonate_service_account", "keyfile", *dbt_profile.CREDENTIAL_FIELDS)}
    return {**kept, "method": "oauth-secrets", "token": token}
