"""google-auth credentials for one :class:`~cosmos_async_triggers.auth.GcpSource`, built as dbt-bigquery builds
them for each profile ``method``. Blocking (key files, ADC lookup): call from a thread.

Errors never quote a key or a token: parse errors of key material may echo parts of it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from collections.abc import Mapping
from typing import Any


class CredentialsError(Exception):
    """The credentials of a source cannot be built; the message holds no secret."""


def build(method: str, secrets: Mapping[str, Any], scopes: tuple[str, ...]) -> Any:
    """Credentials for ``method`` with its fields in ``secrets`` (the names dbt-bigquery's profile uses)."""
    if method == "service-account-json":
        return _service_account_info(keyfile_info(secrets.get("keyfile_json")), scopes)
    if method == "service-account":
        from google.oauth2 import service_account

        try:
            return service_account.Credentials.from_service_account_file(str(secrets["keyfile"]),
                                                                         scopes=list(scopes))
        except OSError as exc:
            failure = (f"the key file {secrets['keyfile']} cannot be read ({exc.strerror or type(exc).__name__}); "
                       "it must exist at this path where the triggerer runs")
        except Exception as exc:
            failure = f"the key file {secrets['keyfile']} is not a service-account key JSON ({type(exc).__name__})"
        raise CredentialsError(failure)  # outside the except block: no context echoing the key
    if method == "oauth":
        import google.auth

        try:
            creds, _ = google.auth.default(scopes=list(scopes))
        except Exception as exc:  # ADC errors explain where google-auth looked; no key involved
            detail = f"{type(exc).__name__}: {str(exc).rstrip('.')}"
        else:
            return creds
        raise CredentialsError(f"Application Default Credentials failed: {detail}. Make them available to the "
                               "triggerer (workload identity, or GOOGLE_APPLICATION_CREDENTIALS naming a key file "
                               "in the triggerer's environment)")
    if method == "oauth-secrets":
        from google.oauth2.credentials import Credentials

        return Credentials(token=secrets.get("token") or None, refresh_token=secrets.get("refresh_token"),
                           client_id=secrets.get("client_id"), client_secret=secrets.get("client_secret"),
                           token_uri=secrets.get("token_uri"), scopes=list(scopes))
    raise CredentialsError(f"unknown authentication method {method!r}")


def keyfile_info(value: Any) -> dict[str, Any]:
    """A service-account key as a dict from a mapping, its JSON text, or that text base64-encoded (as dbt takes)."""
    info: Any = value
    if isinstance(info, (str, bytes)):
        text = info.decode() if isinstance(info, bytes) else info
        with contextlib.suppress(binascii.Error, ValueError):  # not base64: the JSON itself
            text = base64.b64decode(text.strip(), validate=True).decode("utf-8")
        try:
            info = json.loads(text)
        except ValueError:
            info = None
    if not isinstance(info, Mapping):
        raise CredentialsError("the service-account key is neither a mapping nor JSON text (nor base64 of it)")
    info = dict(info)
    if isinstance(info.get("private_key"), str):
        info["private_key"] = info["private_key"].replace("\\n", "\n")  # as dbt-bigquery does
    return info


def _service_account_info(info: dict[str, Any], scopes: tuple[str, ...]) -> Any:
    from google.oauth2 import service_account

    missing = [name for name in ("private_key", "client_email", "token_uri") if not info.get(name)]
    if missing:
        raise CredentialsError(f"the service-account key lacks {', '.join(missing)}; use the whole JSON key file "
                               "of the service account")
    try:
        return service_account.Credentials.from_service_account_info(info, scopes=list(scopes))
    except Exception as exc:
        failure = f"the service-account key cannot be loaded ({type(exc).__name__}); check that it is a key JSON"
    raise CredentialsError(failure)
