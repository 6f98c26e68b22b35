"""Airflow ``google_cloud_platform`` connection → dbt BigQuery profile.

The profile written for dbt refers to every secret through ``env_var()``; the secret values travel only in
the dbt process's environment, so no key material lands in profiles.yml, the project directory, logs or XCom.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml
from cosmos_async_triggers import dbt_profile as profiles_yml
from cosmos_async_triggers.auth import GcpSource
from cosmos_async_triggers.auth import extra as _extra

from cosmos_async.config import ProfileConfig
from cosmos_async.errors import ConfigurationError
from cosmos_async.impersonation import dbt_target_acting_as, impersonated_credentials, single_account

# keyfile_json is a secret as a whole when it is text (JSON or base64); as a mapping its secret fields are.
SECRET_KEYS = ("private_key", "private_key_id", "client_secret", "refresh_token", "token", "keyfile_json")
_ENV_PREFIX = "COSMOS_ASYNC_SECRET_"
# gcsfs's own default scope for read-write access.
STORAGE_SCOPES = ("https://www.googleapis.com/auth/devstorage.full_control",)


DEFAULT_THREADS = 4  # dbt's threads in targets built from a connection, unless profile_args set them


@dataclass
class _BigQueryProfileMapping:
    """Base of the BigQuery profile mappings: connection fields + ``profile_args`` → dbt target dict."""

    conn_id: str = "google_cloud_default"
    profile_args: dict[str, Any] = field(default_factory=dict)
    dbt_method: ClassVar[str]

    def target(self, extras: Mapping[str, Any]) -> dict[str, Any]:
        """The dbt target for this connection's extras; secrets still in clear (see :func:`split_secrets`)."""
        project = self.profile_args.get("project") or _extra(extras, "project")
        if not project:
            raise ConfigurationError(
                f"connection {self.conn_id!r} has no project and profile_args has none: set the connection's "
                "'project' extra or profile_args={'project': ...}."
            )
        # Like Cosmos's BigQuery mappings, the connection's 'dataset' extra serves when profile_args has none.
        dataset = self.profile_args.get("dataset") or _extra(extras, "dataset")
        if not dataset:
            raise ConfigurationError(
                f"connection {self.conn_id!r} has no dataset and profile_args has none: set profile_args="
                "{'dataset': ...} or the connection's 'dataset' extra (the default BigQuery dataset for dbt)."
            )
        target: dict[str, Any] = {"type": "bigquery", "method": self.dbt_method, "project": project,
                                  "dataset": dataset, "threads": DEFAULT_THREADS}
        endpoint = _extra(extras, "bigquery_api_endpoint")
        if endpoint:
            target["api_endpoint"] = endpoint
        if str(_extra(extras, "anonymous")).lower() == "true":
            # Emulators accept any bearer token; dbt-bigquery needs one to skip its credential lookup. Honoured by
            # every mapping so one DAG runs on the emulator or on Google by changing only the connection.
            target.update({"method": "oauth-secrets", "token": "anonymous"})
        else:
            target.update(self.credentials(extras))
            if account := single_account(self.conn_id, extras):
                target["impersonate_service_account"] = account
        target.update(self.profile_args)
        return target

    def credentials(self, extras: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


class GoogleCloudServiceAccountDictProfileMapping(_BigQueryProfileMapping):
    """Service-account key JSON kept in the connection's ``keyfile_dict`` extra."""

    dbt_method = "service-account-json"

    def credentials(self, extras: Mapping[str, Any]) -> dict[str, Any]:
        keyfile = _extra(extras, "keyfile_dict")
        if not keyfile:
            raise ConfigurationError(
                f"connection {self.conn_id!r} has no 'keyfile_dict' extra (the key JSON); paste the service "
                "account's key file into it, or use GoogleCloudOauthProfileMapping to authenticate with Application "
                "Default Credentials."
            )
        return {"keyfile_json": service_account_info(self.conn_id, keyfile)}


class GoogleCloudServiceAccountFileProfileMapping(_BigQueryProfileMapping):
    """Service-account key file on the worker, path in the connection's ``key_path`` extra."""

    dbt_method = "service-account"

    def credentials(self, extras: Mapping[str, Any]) -> dict[str, Any]:
        key_path = _extra(extras, "key_path")
        if not key_path:
            raise ConfigurationError(f"connection {self.conn_id!r} has no 'key_path' extra.")
        return {"keyfile": key_path}


class GoogleCloudOauthProfileMapping(_BigQueryProfileMapping):
    """Application Default Credentials (gcloud login, workload identity, metadata server)."""

    dbt_method = "oauth"

    def credentials(self, extras: Mapping[str, Any]) -> dict[str, Any]:
        return {}


# What google-auth needs from a service-account key. dbt-bigquery, missing one, falls back to running
# `gcloud auth application-default login` and reports only that command's failure.
_KEY_FIELDS = ("private_key", "client_email", "token_uri")


def service_account_info(conn_id: str, keyfile: Any) -> dict[str, Any]:
    """The ``keyfile_dict`` extra as a key dict; a ConfigurationError naming what is wrong (never a value of it)."""
    if isinstance(keyfile, str):
        try:
            keyfile = json.loads(keyfile)
        except ValueError:
            keyfile = None
    if not isinstance(keyfile, Mapping):
        raise ConfigurationError(
            f"connection {conn_id!r}: 'keyfile_dict' is not valid JSON; paste the key file's content."
        )
    missing = [name for name in _KEY_FIELDS if not keyfile.get(name)]
    if missing:
        raise ConfigurationError(
            f"connection {conn_id!r}: 'keyfile_dict' is not a service-account key (it lacks {', '.join(missing)}); "
            "paste the whole JSON key file of the service account (IAM > Service accounts > Keys > Add key)."
        )
    return dict(keyfile)


def split_secrets(target: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Replace secret values with ``env_var()`` references; return (safe target, env holding the secrets)."""
    env: dict[str, str] = {}

    def scrub(obj: Any, path: str) -> Any:
        if isinstance(obj, dict):
            return {k: scrub(v, f"{path}{k.upper()}_") if k not in SECRET_KEYS or isinstance(v, dict)
                    else ref(v, f"{path}{k.upper()}") for k, v in obj.items()}
        return obj

    def ref(value: Any, name: str) -> str:
        env[_ENV_PREFIX + name] = str(value)
        return "{{ env_var('%s') }}" % (_ENV_PREFIX + name)

    return scrub(target, ""), env


def connection_extras(conn_id: str, named_by: str = "profile_mapping's conn_id") -> dict[str, Any]:
    """The extras of an Airflow connection, resolved where the task runs; ``named_by`` is the setting holding
    ``conn_id``, which the error names as the thing to fix."""
    from airflow.sdk import Connection

    try:
        conn = Connection.get(conn_id)
    except Exception as exc:  # Airflow raises AirflowNotFoundException / task-sdk errors
        raise ConfigurationError(f"Airflow connection {conn_id!r} cannot be read ({type(exc).__name__}); create it "
                                 f"or fix {named_by}.") from None
    return dict(conn.extra_dejson or {})


def resolve_target(profile_config: ProfileConfig, extras: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The dbt target as a dict with values rendered (secrets in clear: keep it in memory only).

    A profiles.yml is read and rendered as the triggers read it (:mod:`cosmos_async_triggers.dbt_profile`), with
    this process's environment. ``extras`` overrides the connection lookup (used where the connection was already
    read).
    """
    if profile_config.profile_mapping is None:
        ref = target_ref(profile_config)
        try:
            return profiles_yml.render_value(profiles_yml.read_target(ref), os.environ,
                                            f"profiles.yml {ref.describe()}")
        except profiles_yml.ProfileTargetError as exc:
            failure = str(exc)
        raise ConfigurationError(failure)  # outside the except block: no context holding rendered values
    mapping = profile_config.profile_mapping
    if extras is None:
        extras = connection_extras(mapping.conn_id)
    return mapping.target(extras)


def run_target(profile_config: ProfileConfig) -> dict[str, Any]:
    """The target dbt runs with on a worker (the setup task's capture, LOCAL nodes and fallbacks):
    :func:`resolve_target`, with an impersonated account's delegated token in place of the source credentials
    (:func:`cosmos_async.impersonation.dbt_target_acting_as`). ``dbt ls`` at parse opens no connection and keeps
    :func:`resolve_target`'s, so parsing asks no IAM endpoint."""
    return dbt_target_acting_as(resolve_target(profile_config), profile_source(profile_config))


PARSE_PLACEHOLDER = "cosmos-async-parse-placeholder"


def parse_time_target(profile_config: ProfileConfig, env: Mapping[str, str]) -> tuple[dict[str, Any] | None,
                                                                                       list[str]]:
    """The target ``dbt ls`` runs with at DAG parse: (None, []) when the profile renders here as it is; else a
    profiles.yml target with a placeholder for every ``env_var()`` that only the tasks' run-time env sets (seed 001
    fills its profile from operator_args env templated from Variables), and those variables' names.

    ``dbt ls`` opens no connection, so placeholders cannot change which nodes exist or how they depend on each other;
    they can change node database/schema, which the caller must then not trust.
    """
    if profile_config.profile_mapping is not None:
        return None, []
    ref = target_ref(profile_config)
    raw = profiles_yml.read_target(ref)
    filled: dict[str, str] = {}
    while True:
        try:
            target = profiles_yml.render_value(raw, {**os.environ, **env, **filled}, f"profiles.yml {ref.describe()}")
        except profiles_yml.MissingEnvVar as exc:
            if exc.name in filled:  # cannot happen: the name is set now; guards the loop
                raise ConfigurationError(str(exc)) from None
            filled[exc.name] = PARSE_PLACEHOLDER
            continue
        except profiles_yml.ProfileTargetError as exc:
            failure = str(exc)
            break
        return (target if filled else None), sorted(filled)
    raise ConfigurationError(failure)


def target_ref(profile_config: ProfileConfig) -> profiles_yml.TargetRef:
    """The reference to a profiles.yml target that travels to the triggers (never its values)."""
    return profiles_yml.TargetRef(str(profile_config.profiles_yml_filepath), profile_config.profile_name,
                                 profile_config.target_name)


def check_async_target(profile_config: ProfileConfig) -> profiles_yml.TargetRef:
    """The profiles.yml target's reference, once the parse-time check says the triggers can authenticate with it.

    Cheap (one YAML file; no dbt, no network, no secret rendered); env vars the DAG processor lacks are left for
    the triggerer to resolve.
    """
    ref = target_ref(profile_config)
    try:
        profiles_yml.check_target(ref, profiles_yml.read_target(ref), os.environ)
    except profiles_yml.ProfileTargetError as exc:
        failure = f"ExecutionMode.AIRFLOW_ASYNC with profiles_yml_filepath: {exc}"
    else:
        return ref
    raise ConfigurationError(failure)


@contextmanager
def dbt_profile(profile_config: ProfileConfig, target: Mapping[str, Any]) -> Iterator[tuple[Path, dict]]:
    """Yield (profiles_dir, env) holding ``target``; the directory is private and removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="cosmos-async-profile-") as tmp:
        profiles_dir = Path(tmp)
        safe, env = split_secrets(dict(target))
        profile = {profile_config.profile_name: {"target": profile_config.target_name,
                                                 "outputs": {profile_config.target_name: safe}}}
        path = profiles_dir / "profiles.yml"
        path.write_text(yaml.safe_dump(profile, sort_keys=False))
        os.chmod(path, 0o600)
        yield profiles_dir, env


def profile_source(profile_config: ProfileConfig) -> str:
    """Where the dbt target's credentials come from, named as the triggers name it in errors."""
    mapping = profile_config.profile_mapping
    if mapping is not None:
        return f"connection {mapping.conn_id!r}"
    return f"profiles.yml {target_ref(profile_config).describe()}"


def gcs_storage_options(extras: Mapping[str, Any], conn_id: str) -> dict[str, Any]:
    """gcsfs options for a ``google_cloud_platform`` connection's extras (key, key file, anonymous or ADC), acting
    as the account its ``impersonation_chain`` names."""
    options: dict[str, Any] = {}
    if project := _extra(extras, "project"):
        options["project"] = project
    if endpoint := _extra(extras, "storage_api_endpoint"):
        options["endpoint_url"] = endpoint
    keyfile = _extra(extras, "keyfile_dict")
    if str(_extra(extras, "anonymous")).lower() == "true":
        options["token"] = "anon"
    elif keyfile:
        # Checked here: gcsfs takes a dict without a private key for user credentials and fails on 'refresh_token'.
        options["token"] = service_account_info(conn_id, keyfile)
    elif key_path := _extra(extras, "key_path"):
        options["token"] = key_path
    else:
        options["token"] = "google_default"
    source = GcpSource.from_extras(conn_id, extras)
    if source.impersonate and not source.anonymous:
        options["token"] = impersonated_credentials(source, STORAGE_SCOPES)
    return options
