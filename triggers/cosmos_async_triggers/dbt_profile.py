"""A dbt profiles.yml target, read and rendered as dbt renders it, without dbt.

Shared by the triggerer (which authenticates as dbt would with that target) and by cosmos_async (the worker's
rendering and the parse-time check), so both sides read one profiles.yml the same way. Values are rendered with
the Jinja dbt allows there: ``env_var(name, default)`` and the ``as_text``/``as_bool``/``as_number``/``as_native``
filters, with dbt's native typing (a lone ``{{ ... }}`` keeps a plain string unless a filter asks for a Python
literal). Nothing here logs or quotes a rendered value: targets hold secrets.

PyYAML and Jinja2 come with Airflow, which every process importing this package has.
"""

from __future__ import annotations

from ast import literal_eval
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Any

# The methods a trigger can authenticate with, and the fields each needs (any one of a tuple's alternatives).
METHOD_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "service-account": (("keyfile",),),
    "service-account-json": (("keyfile_json",),),
    "oauth": (),
    "oauth-secrets": (("token", "refresh_token"),),
}
REFRESH_FIELDS = ("refresh_token", "client_id", "client_secret", "token_uri")


class ProfileTargetError(Exception):
    """The target cannot be read or used; the message names profiles.yml, the profile/target and the fix."""


class MissingEnvVar(ProfileTargetError):
    """The target uses ``env_var(name)`` without a default and this process's environment lacks ``name``."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


@dataclass(frozen=True)
class TargetRef:
    """Which target of which profiles.yml: the only thing about a profile that travels in trigger kwargs."""

    profiles_yml: str
    profile: str
    target: str

    def describe(self) -> str:
        return f"{self.profiles_yml} (profile {self.profile!r}, target {self.target!r})"

    def to_kwargs(self) -> dict[str, str]:
        return {"profiles_yml": self.profiles_yml, "profile": self.profile, "target": self.target}

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> TargetRef:
        return cls(str(kwargs["profiles_yml"]), str(kwargs["profile"]), str(kwargs["target"]))


class _Text(str):
    """``as_text``: stays a string."""


class _Native(str):
    """``as_native``: evaluated as a Python literal."""


class _Bool(_Native):
    """``as_bool``: a literal that must be a bool."""


class _Number(_Native):
    """``as_number``: a literal that must be a number."""


def _native_concat(nodes: Any) -> Any:
    """dbt's rule (dbt_common ``quoted_native_concat``): one node keeps its type unless a filter marks it."""
    head = list(islice(nodes, 2))
    if not head:
        return ""
    if len(head) > 1:
        return "".join(str(v) for v in chain(head, nodes))
    raw = head[0]
    if isinstance(raw, _Text):
        return str(raw)
    if not isinstance(raw, _Native):
        return raw
    try:
        result = literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError):
        result = str(raw)
    if isinstance(raw, _Bool) and not isinstance(result, bool):
        raise ValueError("as_bool: the value is not true or false")
    if isinstance(raw, _Number) and (isinstance(result, bool) or not isinstance(result, (int, float))):
        raise ValueError("as_number: the value is not a number")
    return result


def render_value(value: Any, env: Mapping[str, str], where: str = "profiles.yml",
                 env_hint: str = "this process's environment") -> Any:
    """``value`` with every string rendered as dbt renders profiles.yml, env vars read from ``env``.

    A missing variable raises :class:`MissingEnvVar` naming it, ``where`` it is used and ``env_hint`` (where to
    set it); a template error raises :class:`ProfileTargetError` without quoting any rendered value.
    """
    if isinstance(value, dict):
        return {k: render_value(v, env, where, env_hint) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, env, where, env_hint) for v in value]
    if not isinstance(value, str) or "{" not in value:
        return value
    import jinja2
    import jinja2.nativetypes

    def env_var(name: str, default: str | None = None) -> str:
        if name in env:
            return env[name]
        if default is None:
            raise MissingEnvVar(name, f"{where} uses env_var('{name}'), which is not set in {env_hint}: set "
                                      f"{name} there, or give env_var a default")
        return default

    class Environment(jinja2.nativetypes.NativeEnvironment):
        concat = staticmethod(_native_concat)

    jenv = Environment(undefined=jinja2.StrictUndefined)
    jenv.filters.update(as_text=_Text, as_native=_Native, as_bool=_Bool, as_number=_Number)
    failure = None
    try:
        return jenv.from_string(value).render(env_var=env_var)
    except MissingEnvVar:
        raise
    except (jinja2.TemplateError, ValueError) as exc:
        failure = f"{where}: a value cannot be rendered ({type(exc).__name__}: {str(exc)[:120]})"
    raise ProfileTargetError(failure)  # outside the except block: no context holding rendered values


# Target fields that locate and bill the jobs but hold no secret. The setup task renders them where the task's
# env (operator_args["env"], templated at run time) is set and records them in the run's index, so the triggerer
# need not have those variables; the credential fields are rendered in the triggerer only.
# The retry fields (cosmos_async_triggers.job_retry) are recorded for a profile mapping too.
JOB_FIELDS = ("job_retries", "retries", "job_retry_deadline_seconds")
PUBLIC_FIELDS = ("method", "project", "execution_project", "database", "location", "api_endpoint",
                 "impersonate_service_account", "keyfile", "scopes", *JOB_FIELDS)
# What the triggers authenticate with; the only fields besides the public ones they render (dataset, threads and
# the rest are dbt's business, and may use variables only the worker has).
CREDENTIAL_FIELDS = ("keyfile_json", "token", "refresh_token", "client_id", "client_secret", "token_uri")
TRIGGER_FIELDS = ("type", *PUBLIC_FIELDS, *CREDENTIAL_FIELDS)


def public_settings(target: Mapping[str, Any]) -> dict[str, Any]:
    """The rendered target's :data:`PUBLIC_FIELDS` that are set, as JSON-able values."""
    settings: dict[str, Any] = {}
    for name in PUBLIC_FIELDS:
        value = target.get(name)
        if value in (None, ""):
            continue
        settings[name] = [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value)
    return settings


def read_target(ref: TargetRef) -> dict[str, Any]:
    """The raw (unrendered) target dict of ``ref``; blocking file I/O."""
    path = Path(ref.profiles_yml)
    import yaml

    try:
        profiles = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ProfileTargetError(f"profiles.yml {path} cannot be read ({exc.strerror or type(exc).__name__}): "
                                 "it must exist at this path on the workers and on the triggerer (ship it "
                                 "with the DAG bundle or the image)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" near line {mark.line + 1}" if mark is not None else ""
        raise ProfileTargetError(f"profiles.yml {path} is not valid YAML{line}; fix the file") from None
    try:
        target = profiles[ref.profile]["outputs"][ref.target]
    except (KeyError, TypeError):
        raise ProfileTargetError(f"{path} has no profile {ref.profile!r} with target {ref.target!r} (under "
                                 f"{ref.profile}: outputs: {ref.target}:); fix ProfileConfig(profile_name, "
                                 "target_name) or the file") from None
    if not isinstance(target, dict):
        raise ProfileTargetError(f"{ref.describe()}: the target is not a mapping of fields; fix the file")
    return dict(target)


def check_target(ref: TargetRef, target: Mapping[str, Any], env: Mapping[str, str]) -> None:
    """Raise if the triggers cannot authenticate with ``target``; fields whose env vars ``env`` lacks are skipped
    (they are checked where the target is used).

    Only ``type`` and ``method`` are rendered; the other fields are checked for presence, so no secret is read.
    """
    where = ref.describe()
    kind = _rendered_or_none(target.get("type"), env, where)
    if kind is not None and str(kind).lower() != "bigquery":
        raise ProfileTargetError(f"{where} has type {kind!r}: ExecutionMode.AIRFLOW_ASYNC runs BigQuery jobs "
                                 "only; point ProfileConfig at a bigquery target or use ExecutionMode.LOCAL")
    method = _rendered_or_none(target.get("method"), env, where)
    if method is None and "method" in target:
        return
    if method not in METHOD_FIELDS:
        known = ", ".join(METHOD_FIELDS)
        has = f"has method {method!r}, which AIRFLOW_ASYNC's triggers cannot authenticate with" if method else \
            "has no method"
        raise ProfileTargetError(f"{where} {has}; use one of {known} (optionally with "
                                 "impersonate_service_account)")
    for alternatives in METHOD_FIELDS[method]:
        if not any(target.get(name) not in (None, "") for name in alternatives):
            names = " or ".join(alternatives)
            raise ProfileTargetError(f"{where}: method {method} needs {names}; add it to the target")
    if method == "oauth-secrets" and target.get("token") in (None, ""):
        missing = [name for name in REFRESH_FIELDS if target.get(name) in (None, "")]
        if missing:
            raise ProfileTargetError(f"{where}: method oauth-secrets with a refresh_token also needs "
                                     f"{', '.join(missing)}; add them to the target (or give a token)")


def _rendered_or_none(value: Any, env: Mapping[str, str], where: str) -> Any:
    try:
        return render_value(value, env, where)
    except MissingEnvVar:
        return None
