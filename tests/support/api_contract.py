"""Google's published API contract, checked without Google: requests (and answers) against discovery documents.

The discovery documents are the ones google-api-python-client ships (a dev dependency only):
``bigquery.v2``, ``storage.v1`` and ``iamcredentials.v1``. :func:`check_request` finds the method a request
calls (HTTP method and path template, media-upload and batch paths included) and checks its query parameters,
its JSON body against the method's request schema (fields, types and enum values, recursively), and the limits
BigQuery documents in prose: job ids, labels and query length. :func:`check_response` checks a JSON answer
against the method's response schema. OAuth token requests are not in any discovery document:
:func:`check_token_request` checks them by hand against RFC 6749/7523 as Google documents its token endpoint.

Every check returns :class:`Violation` objects naming the request's method and path and the field that broke
the contract; :data:`LOG` collects them for the whole test session (see tests/conftest.py).
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

API_NAMES = ("bigquery.v2", "storage.v1", "iamcredentials.v1")
# Limits BigQuery documents in prose (JobReference.jobId, JobConfiguration.labels, query length).
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,1024}")
LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
MAX_LABELS = 64
MAX_QUERY_CHARS = 1024 * 1024
# Values documented only in a field's description ("Possible values include ..."), not as a discovery enum.
DESCRIBED_ENUMS = {
    ("JobConfigurationQuery", "priority"): {"INTERACTIVE", "BATCH"},
    ("JobConfigurationQuery", "createDisposition"): {"CREATE_IF_NEEDED", "CREATE_NEVER"},
    ("JobConfigurationLoad", "createDisposition"): {"CREATE_IF_NEEDED", "CREATE_NEVER"},
    ("JobConfigurationQuery", "writeDisposition"): {"WRITE_TRUNCATE", "WRITE_TRUNCATE_DATA", "WRITE_APPEND",
                                                     "WRITE_EMPTY"},
    ("JobConfigurationLoad", "writeDisposition"): {"WRITE_TRUNCATE", "WRITE_TRUNCATE_DATA", "WRITE_APPEND",
                                                    "WRITE_EMPTY"},
    ("JobConfigurationLoad", "sourceFormat"): {"CSV", "DATASTORE_BACKUP", "NEWLINE_DELIMITED_JSON", "AVRO",
                                               "PARQUET", "ORC", "GOOGLE_SHEETS"},
}
# Query parameters Google's own client sends that the discovery document does not list, accepted by BigQuery:
# google-cloud-bigquery's Client.get_job and Client.cancel_job add projection=full (dbt cancels through the latter).
CLIENT_PARAMETERS = {("bigquery.jobs.get", "projection"), ("bigquery.jobs.cancel", "projection")}
# Upload protocol parameters of the media paths (Google's resumable-upload documentation, checked by hand).
UPLOAD_TYPES = {"media", "multipart", "resumable"}
TOKEN_GRANTS = {
    "urn:ietf:params:oauth:grant-type:jwt-bearer": {"assertion"},
    "refresh_token": {"refresh_token", "client_id", "client_secret"},
}


@dataclass(frozen=True)
class Violation:
    """One broken rule: the request (method, path), the Google method it calls, the field and what is wrong."""

    http_method: str
    path: str
    api_method: str
    where: str
    problem: str

    def __str__(self) -> str:
        return f"{self.http_method} {self.path} ({self.api_method}): {self.where}: {self.problem}"


@dataclass(frozen=True)
class Checked:
    """One checked request: the Google method it calls, its path and query, its JSON resource, the violations."""

    method_id: str
    http_method: str
    target: str
    resource: Any = None
    violations: list[Violation] = field(default_factory=list)

    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.target).query, keep_blank_values=True))


@dataclass(frozen=True)
class Route:
    api: str
    method_id: str  # e.g. bigquery.jobs.insert
    http_method: str
    template: str
    pattern: re.Pattern[str]
    spec: dict[str, Any]
    upload: bool = False
    download: bool = False

    @property
    def literal_length(self) -> int:
        return len(re.sub(r"\{[^}]*\}", "", self.template))


def _documents_dir() -> Path:
    import googleapiclient

    return Path(googleapiclient.__file__).parent / "discovery_cache" / "documents"


@cache
def document(api: str) -> dict[str, Any]:
    """A shipped discovery document, e.g. ``document("bigquery.v2")``."""
    return json.loads((_documents_dir() / f"{api}.json").read_text())


def _template_regex(template: str) -> re.Pattern[str]:
    out, pos = [], 0
    for m in re.finditer(r"\{(\+?)([^}]+)\}", template):
        out.append(re.escape(template[pos:m.start()]))
        name = re.sub(r"\W", "_", m[2])
        out.append(f"(?P<{name}>[^?]+)" if m[1] else f"(?P<{name}>[^/?]+)")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out) + "/?")


def _methods(resource: dict[str, Any]) -> list[dict[str, Any]]:
    found = list(resource.get("methods", {}).values())
    for child in resource.get("resources", {}).values():
        found.extend(_methods(child))
    return found


@cache
def routes() -> tuple[Route, ...]:
    """Every method of the three APIs as a path pattern (service path included), and its media paths."""
    table = []
    for api in API_NAMES:
        doc = document(api)
        base = "/" + doc.get("servicePath", "")
        for spec in _methods(doc):
            template = base + spec["path"]
            table.append(Route(api, spec["id"], spec["httpMethod"], template, _template_regex(template), spec))
            simple = (spec.get("mediaUpload") or {}).get("protocols", {}).get("simple")
            if simple:
                table.append(Route(api, spec["id"], spec["httpMethod"], simple["path"],
                                   _template_regex(simple["path"]), spec, upload=True))
            if spec.get("useMediaDownloadService"):  # media also comes from the download service's path
                media = "/download" + template
                table.append(Route(api, spec["id"], spec["httpMethod"], media, _template_regex(media), spec,
                                   download=True))
    return tuple(table)


def find_route(http_method: str, path: str) -> Route | None:
    """The method a request calls: among the templates matching ``path``, the most specific one."""
    matches = [r for r in routes() if r.http_method == http_method and r.pattern.fullmatch(path)]
    return max(matches, key=lambda r: r.literal_length, default=None)


class _Checker:
    def __init__(self, api: str, http_method: str, path: str, method_id: str, *, request: bool) -> None:
        self.schemas = document(api)["schemas"]
        self.http_method, self.path, self.method_id, self.request = http_method, path, method_id, request
        self.found: list[Violation] = []

    def fail(self, where: str, problem: str) -> None:
        self.found.append(Violation(self.http_method, self.path, self.method_id, where, problem))

    def value(self, where: str, value: Any, spec: dict[str, Any], owner: str = "", name: str = "") -> None:
        if "$ref" in spec:
            return self.object(where, value, spec["$ref"])
        kind = spec.get("type")
        if kind == "object":
            if not isinstance(value, dict):
                return self.fail(where, f"expected an object, got {type(value).__name__}")
            extra = spec.get("additionalProperties")
            props = spec.get("properties") or {}
            for key, item in value.items():
                if key in props:
                    self.value(f"{where}.{key}", item, props[key])
                elif extra is not None:
                    self.value(f"{where}.{key}", item, extra)
                else:
                    self.fail(f"{where}.{key}", "not a documented field")
            if name == "labels" and extra is not None:
                self.labels(where, value)
            return None
        if kind == "array":
            if not isinstance(value, list):
                return self.fail(where, f"expected an array, got {type(value).__name__}")
            for i, item in enumerate(value):
                self.value(f"{where}[{i}]", item, spec.get("items") or {})
            return None
        if value is None:
            return None  # JSON null: Google treats it as unset
        self.scalar(where, value, spec, owner, name)
        return None

    def scalar(self, where: str, value: Any, spec: dict[str, Any], owner: str, name: str) -> None:
        kind, fmt = spec.get("type"), spec.get("format")
        if kind == "string":
            # int64/uint64/double travel as JSON strings; Google's parsers also take JSON numbers for them.
            numeric = fmt in ("int64", "uint64") and isinstance(value, int) and not isinstance(value, bool)
            if not isinstance(value, str) and not numeric:
                return self.fail(where, f"expected a string{f' ({fmt})' if fmt else ''}, got {value!r}")
            if fmt in ("int64", "uint64") and isinstance(value, str) and not re.fullmatch(r"-?\d+", value):
                return self.fail(where, f"expected an {fmt} as a string of digits, got {value!r}")
        elif kind == "integer":
            if isinstance(value, bool) or not isinstance(value, int | str) or not re.fullmatch(r"-?\d+", str(value)):
                return self.fail(where, f"expected an integer, got {value!r}")
        elif kind == "number":
            if isinstance(value, bool) or not isinstance(value, int | float):
                return self.fail(where, f"expected a number, got {value!r}")
        elif kind == "boolean" and not isinstance(value, bool):
            return self.fail(where, f"expected a boolean, got {value!r}")
        allowed = set(spec.get("enum") or ()) or DESCRIBED_ENUMS.get((owner, name))
        if allowed and value not in allowed:
            self.fail(where, f"{value!r} is not one of {sorted(allowed)}")
        return None

    def object(self, where: str, value: Any, ref: str) -> None:
        schema = self.schemas[ref]
        if not isinstance(value, dict):
            return self.fail(where, f"expected a {ref} object, got {type(value).__name__}")
        props = schema.get("properties") or {}
        for key, item in value.items():
            spec = props.get(key)
            if spec is None:
                if schema.get("additionalProperties") is not None:
                    self.value(f"{where}.{key}", item, schema["additionalProperties"])
                else:
                    self.fail(f"{where}.{key}", f"not a field of {ref}")
                continue
            self.value(f"{where}.{key}", item, spec, ref, key)
        if self.request:
            self.limits(where, value, ref)
        return None

    def limits(self, where: str, value: dict[str, Any], ref: str) -> None:
        if ref == "JobReference" and "jobId" in value and not JOB_ID.fullmatch(str(value["jobId"])):
            self.fail(f"{where}.jobId", f"{str(value['jobId'])[:80]!r} is not 1-1,024 characters of [A-Za-z0-9_-]")
        query = value.get("query") if ref == "JobConfigurationQuery" else None
        if isinstance(query, str) and len(query) > MAX_QUERY_CHARS:
            self.fail(f"{where}.query", f"{len(value['query'])} characters, more than {MAX_QUERY_CHARS}")

    def labels(self, where: str, labels: dict[str, Any]) -> None:
        if len(labels) > MAX_LABELS:
            self.fail(where, f"{len(labels)} labels, more than {MAX_LABELS}")
        for key, item in labels.items():
            if not LABEL_KEY.fullmatch(key):
                self.fail(f"{where}.{key}", "label key is not 1-63 lowercase letters, digits, _ or -, "
                                            "starting with a letter")
            if isinstance(item, str) and not LABEL_VALUE.fullmatch(item):
                self.fail(f"{where}.{key}", f"label value {item[:80]!r} is not 0-63 lowercase letters, digits, "
                                            "_ or -")


def _check_params(checker: _Checker, route: Route, path_match: re.Match[str], query: list[tuple[str, str]]) -> None:
    params = route.spec.get("parameters") or {}
    common = document(route.api).get("parameters") or {}
    for name, spec in params.items():
        if spec.get("location") != "path":
            continue
        value = unquote(path_match.groupdict().get(re.sub(r"\W", "_", name)) or "")
        if spec.get("pattern") and not re.search(spec["pattern"], value):
            checker.fail(f"path {name}", f"{value!r} does not match {spec['pattern']}")
        if name == "jobId" and not JOB_ID.fullmatch(value):
            checker.fail(f"path {name}", f"{value[:80]!r} is not 1-1,024 characters of [A-Za-z0-9_-]")
    names = {n for n, _ in query}
    for name, value in query:
        spec = params.get(name) if (params.get(name) or {}).get("location") == "query" else common.get(name)
        if spec is None and route.upload and name == "upload_id":
            continue  # the session id of a resumable upload's later requests
        if spec is None and (route.method_id, name) in CLIENT_PARAMETERS and value == "full":
            continue
        if spec is None:
            checker.fail(f"query {name}", "not a parameter of this method")
            continue
        checker.scalar(f"query {name}", _typed(value, spec), spec, "", name)
    for name, spec in params.items():
        if spec.get("location") == "query" and spec.get("required") and name not in names:
            checker.fail(f"query {name}", "required parameter missing")
    if route.download and dict(query).get("alt") != "media":
        checker.fail("query alt", "the download path serves media only (alt=media)")
    upload_type = dict(query).get("uploadType")
    if route.upload and upload_type not in UPLOAD_TYPES:
        checker.fail("query uploadType", f"{upload_type!r}: a media path needs one of {sorted(UPLOAD_TYPES)}")


def _typed(value: str, spec: dict[str, Any]) -> Any:
    if spec.get("type") == "boolean":  # Google's parameter parser takes either case (Python clients send True)
        return {"true": True, "false": False}.get(value.lower(), value)
    return value


def check_request(http_method: str, target: str, body: bytes = b"", content_type: str = "") -> Checked:
    """Check one request; ``target`` is the path with its query."""
    url = urlsplit(target)
    path, query = url.path, parse_qsl(url.query, keep_blank_values=True)
    if http_method == "POST" and path.startswith("/batch/"):
        return Checked("batch", http_method, target, None, _check_batch(path, body, content_type))
    route = find_route(http_method, path)
    if route is None and http_method == "PUT" and "upload_id" in dict(query):
        # A resumable upload's later requests: PUT to the session URI the first POST answered with, i.e. the
        # media path with upload_id (Google's resumable-upload documentation; not a discovery method).
        route = next((r for r in routes() if r.upload and r.pattern.fullmatch(path)), None)
    if route is None:
        return Checked("unknown", http_method, target, None, [Violation(
            http_method, path, "unknown", "path",
            "no method of bigquery v2, storage v1 or iamcredentials v1 has this HTTP method and path template")])
    checker = _Checker(route.api, http_method, path, route.method_id, request=True)
    _check_params(checker, route, route.pattern.fullmatch(path), query)  # type: ignore[arg-type]
    resource = _request_resource(checker, route, dict(query), body, content_type)
    ref = (route.spec.get("request") or {}).get("$ref")
    if resource is not None:
        if ref is None:
            checker.fail("body", "this method takes no request body")
        else:
            checker.object("body", resource, ref)
    return Checked(route.method_id, http_method, target, resource, checker.found)


def _request_resource(checker: _Checker, route: Route, query: dict[str, str], body: bytes,
                      content_type: str) -> Any:
    """The JSON resource a request carries (the first part of a multipart upload), or None."""
    if not body:
        return None
    if (route.upload and query.get("uploadType") in ("media", None)) or "upload_id" in query:
        return None  # raw media bytes
    if route.upload and query.get("uploadType") == "multipart":
        message = email.parser.BytesParser(policy=email.policy.default).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + body)
        parts = list(message.iter_parts()) if message.is_multipart() else []
        if len(parts) != 2:
            checker.fail("body", f"a multipart upload has 2 parts (metadata, media), this has {len(parts)}")
            return None
        body = parts[0].get_payload(decode=True) or b""
    try:
        return json.loads(body)
    except ValueError:
        checker.fail("body", f"not JSON ({body[:60]!r})")
        return None


def _check_batch(path: str, body: bytes, content_type: str) -> list[Violation]:
    """A batch request (``multipart/mixed`` of ``application/http`` parts): each inner request is checked."""
    batch_paths = {"/" + document(api).get("batchPath", "") for api in API_NAMES}
    if path.rstrip("/") not in batch_paths:
        return [Violation("POST", path, "batch", "path", f"not a batch path ({sorted(batch_paths)})")]
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    found: list[Violation] = []
    for part in message.iter_parts() if message.is_multipart() else []:
        inner = part.get_payload(decode=True) or b""
        head, _, inner_body = inner.replace(b"\r\n", b"\n").partition(b"\n\n")
        request_line, *header_lines = head.decode(errors="replace").split("\n")
        method, _, rest = request_line.partition(" ")
        target = rest.rsplit(" ", 1)[0]
        headers = dict(line.split(":", 1) for line in header_lines if ":" in line)
        found.extend(check_request(method, target, inner_body.strip(),
                                   headers.get("Content-Type", "").strip()).violations)
    return found


def check_response(http_method: str, target: str, status: int, body: bytes) -> list[Violation]:
    """Violations of a 2xx JSON answer against the response schema of the method the request called."""
    path = urlsplit(target).path
    route = find_route(http_method, path)
    ref = (route.spec.get("response") or {}).get("$ref") if route else None
    if route is None or ref is None or status >= 300 or not body.strip():
        return []
    if http_method == "GET" and "alt=media" in target:
        return []
    checker = _Checker(route.api, http_method, path, route.method_id, request=False)
    try:
        checker.object("answer", json.loads(body), ref)
    except ValueError:
        checker.fail("answer", f"not JSON ({body[:60]!r})")
    return checker.found


def check_token_request(http_method: str, content_type: str, form: dict[str, str]) -> list[Violation]:
    """An OAuth 2.0 token request as Google documents it (not in discovery, checked by hand): POST, a
    form-encoded body, a JWT-bearer grant with its ``assertion`` or a refresh grant with client id and secret."""
    found: list[Violation] = []

    def fail(field_name: str, problem: str) -> None:
        found.append(Violation(http_method, "/token", "oauth2.token (RFC 6749/7523)", field_name, problem))

    if http_method != "POST":
        fail("method", "the token endpoint takes POST only")
    if not content_type.startswith("application/x-www-form-urlencoded"):
        fail("Content-Type", f"{content_type!r}: the body must be application/x-www-form-urlencoded")
    grant = form.get("grant_type")
    needed = TOKEN_GRANTS.get(grant or "")
    if needed is None:
        fail("grant_type", f"{grant!r} is not one of {sorted(TOKEN_GRANTS)}")
        return found
    for name in sorted(needed - set(form)):
        fail(name, f"required with grant_type {grant}")
    if grant.endswith("jwt-bearer") and form.get("assertion", "").count(".") != 2:
        fail("assertion", "not a signed JWT (header.claims.signature)")
    return found


@dataclass
class ContractLog:
    """Every checked request of the session: counts per Google method, the violations found, and the recent
    requests themselves (tests assert on them, e.g. that each carries the job's location)."""

    calls: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)
    requests: deque[Checked] = field(default_factory=lambda: deque(maxlen=5000))
    recorded: int = 0  # requests ever recorded (the deque keeps the latest only)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, method_id: str, violations: list[Violation], checked: Checked | None = None) -> None:
        with self._lock:
            self.calls[method_id] += 1
            self.violations.extend(violations)
            if checked is not None:
                self.requests.append(checked)
                self.recorded += 1

    def record(self, checked: Checked) -> None:
        self.add(checked.method_id, checked.violations, checked)

    def requests_since(self, mark: int) -> list[Checked]:
        """The requests recorded after ``mark`` (an earlier value of :attr:`recorded`), if still kept."""
        with self._lock:
            count = self.recorded - mark
            assert count <= len(self.requests), f"{count} requests since the mark, only the last 5000 are kept"
            return list(self.requests)[len(self.requests) - count:] if count else []

    def since(self, mark: int) -> list[Violation]:
        with self._lock:
            return self.violations[mark:]


LOG = ContractLog()
