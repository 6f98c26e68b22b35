"""manifest.json → a typed, immutable node graph. Pure Python: parsing a DAG file never imports dbt."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cosmos_async.errors import ManifestError

# Manifest schema versions this parser has been checked against (dbt-core 1.6 → 1.11 write v10-v12).
SUPPORTED_SCHEMA_VERSIONS = frozenset({10, 11, 12})
RUNNABLE_TYPES = frozenset({"model", "seed", "snapshot", "test"})
_NODE_KEYS = ("package_name", "original_file_path", "fqn", "tags", "database", "schema", "alias", "identifier",
              "version", "attached_node", "source_name")
# Source-only keys: dbt's freshness rules and the meta that may carry a freshness wait.
_SOURCE_KEYS = ("loaded_at_field", "freshness", "meta")
# Bump when the cached graph's shape changes, so older cache files are ignored.
_GRAPH_FORMAT = 3


@dataclass(frozen=True)
class DbtNode:
    """One node of the dbt graph (model, seed, snapshot, test or source)."""

    unique_id: str
    resource_type: str
    name: str
    package_name: str
    original_file_path: str
    fqn: tuple[str, ...]
    tags: frozenset[str]
    config: Mapping[str, Any]
    depends_on: tuple[str, ...]
    database: str | None = None
    schema: str | None = None
    alias: str | None = None
    version: str | None = None
    # For tests: the model/seed/snapshot they are attached to, when dbt knows it.
    attached_node: str | None = None
    source_name: str | None = None
    # For sources: the column dbt reads freshness from, and the freshness rules (warn_after, error_after, filter).
    loaded_at_field: str | None = None
    freshness: Mapping[str, Any] | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def has_freshness(self) -> bool:
        """Whether dbt checks this source's freshness (a warn_after or error_after with count and period)."""
        rules = self.freshness or {}
        return any((rules.get(k) or {}).get("count") and (rules.get(k) or {}).get("period")
                   for k in ("warn_after", "error_after"))

    @property
    def materialized(self) -> str | None:
        return self.config.get("materialized")

    @property
    def enabled(self) -> bool:
        return bool(self.config.get("enabled", True))

    @property
    def relation_name(self) -> str | None:
        """`database.schema.alias` of the relation the node builds, when it builds one."""
        if self.resource_type not in ("model", "seed", "snapshot", "source") or self.materialized == "ephemeral":
            return None
        return ".".join(part for part in (self.database, self.schema, self.alias or self.name) if part)

    @property
    def label(self) -> str:
        """The node's name as users read it in task ids (versioned models keep their version)."""
        return f"{self.name}_v{self.version}" if self.version is not None else self.name


@dataclass(frozen=True)
class Manifest:
    """The parsed graph: nodes (including sources) by unique id, and the project's name."""

    project_name: str
    adapter_type: str | None
    dbt_version: str | None
    nodes: Mapping[str, DbtNode]
    children: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Which project-level hooks exist: a subset of {"on-run-start", "on-run-end"}.
    hooks: frozenset[str] = frozenset()

    def parents(self, unique_id: str) -> tuple[str, ...]:
        return self.nodes[unique_id].depends_on

    @classmethod
    def from_nodes(cls, nodes: Iterable[DbtNode], project_name: str, adapter_type: str | None = None,
                   dbt_version: str | None = None, hooks: Iterable[str] = ()) -> Manifest:
        by_id = {n.unique_id: n for n in nodes}
        children: dict[str, list[str]] = {uid: [] for uid in by_id}
        for node in by_id.values():
            for parent in node.depends_on:
                if parent in children:
                    children[parent].append(node.unique_id)
        return cls(project_name, adapter_type, dbt_version, MappingProxyType(by_id),
                   MappingProxyType({k: tuple(v) for k, v in children.items()}), frozenset(hooks))


def node_from_dict(raw: Mapping[str, Any]) -> DbtNode:
    """A node from its manifest.json (or ``dbt ls --output json``) dict."""
    depends = raw.get("depends_on") or {}
    version = raw.get("version")
    return DbtNode(
        unique_id=raw["unique_id"],
        resource_type=raw["resource_type"],
        name=raw["name"],
        package_name=raw.get("package_name", ""),
        original_file_path=raw.get("original_file_path", ""),
        fqn=tuple(raw.get("fqn") or ()),
        tags=frozenset(raw.get("tags") or ()),
        config=MappingProxyType(dict(raw.get("config") or {})),
        depends_on=tuple(dict.fromkeys(depends.get("nodes") or ())),
        database=raw.get("database"),
        schema=raw.get("schema"),
        alias=raw.get("alias") or raw.get("identifier"),
        version=None if version is None else str(version),
        attached_node=raw.get("attached_node"),
        source_name=raw.get("source_name"),
        # dbt 1.10+ also writes both into the source's config; the top-level keys are the resolved values.
        loaded_at_field=raw.get("loaded_at_field") or (raw.get("config") or {}).get("loaded_at_field"),
        freshness=_plain(raw.get("freshness") or (raw.get("config") or {}).get("freshness")),
        meta=MappingProxyType(dict(raw.get("meta") or {})),
    )


def _plain(value: Any) -> Mapping[str, Any] | None:
    return MappingProxyType(dict(value)) if isinstance(value, Mapping) else None


def parse_manifest(data: Mapping[str, Any], origin: str = "manifest.json") -> Manifest:
    """Build the graph from a manifest dict; raise :class:`ManifestError` naming what is wrong."""
    return _from_graph(_graph(data, origin), origin)


def _graph(data: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """The part of a manifest the graph needs, as plain JSON (also what the parse cache stores)."""
    if not isinstance(data, Mapping) or "nodes" not in data or "metadata" not in data:
        raise ManifestError(f"{origin} is not a dbt manifest (no 'metadata'/'nodes'); regenerate it: `dbt parse`.")
    metadata = data["metadata"]
    schema_url = str(metadata.get("dbt_schema_version", ""))
    try:
        schema_version = int(schema_url.rsplit("/v", 1)[1].split(".")[0])
    except (IndexError, ValueError):
        raise ManifestError(
            f"{origin}: unknown dbt_schema_version {schema_url!r}; regenerate it with `dbt parse`."
        ) from None
    if schema_version not in SUPPORTED_SCHEMA_VERSIONS:
        raise ManifestError(
            f"{origin} has manifest schema v{schema_version}, which cosmos-async does not read "
            f"(supported: v{min(SUPPORTED_SCHEMA_VERSIONS)}-v{max(SUPPORTED_SCHEMA_VERSIONS)}, dbt-core 1.6-1.11); "
            "regenerate it with a supported dbt-core."
        )
    try:
        raw_nodes = list(data["nodes"].values()) + list((data.get("sources") or {}).values())
        nodes = [_compact(raw) for raw in raw_nodes if raw.get("resource_type") in RUNNABLE_TYPES | {"source"}]
        hooks = sorted({hook for raw in data["nodes"].values() if raw.get("resource_type") == "operation"
                        for hook in ("on-run-start", "on-run-end") if hook in raw.get("unique_id", "")})
    except (KeyError, TypeError, AttributeError) as exc:
        raise ManifestError(f"{origin} is corrupt: a node lacks {exc}; regenerate it with `dbt parse`.") from None
    return {"format": _GRAPH_FORMAT, "project_name": metadata.get("project_name"),
            "adapter_type": metadata.get("adapter_type"), "dbt_version": metadata.get("dbt_version"),
            "hooks": hooks, "nodes": nodes}


def _compact(raw: Mapping[str, Any]) -> dict[str, Any]:
    keys = _NODE_KEYS + _SOURCE_KEYS if raw.get("resource_type") == "source" else _NODE_KEYS
    node = {key: raw[key] for key in keys if raw.get(key) not in (None, {})}
    node["unique_id"], node["resource_type"], node["name"] = raw["unique_id"], raw["resource_type"], raw["name"]
    # Unset and empty config keys are most of a node's bytes and never match a selector.
    node["config"] = {k: v for k, v in (raw.get("config") or {}).items() if v is not None and v != {} and v != []}
    node["depends_on"] = {"nodes": list((raw.get("depends_on") or {}).get("nodes") or ())}
    return node


def _from_graph(graph: Mapping[str, Any], origin: str) -> Manifest:
    try:
        nodes = [node_from_dict(raw) for raw in graph["nodes"]]
    except (KeyError, TypeError, AttributeError) as exc:
        raise ManifestError(f"{origin} is corrupt: a node lacks {exc}; regenerate it with `dbt parse`.") from None
    project = graph.get("project_name") or _guess_project(nodes)
    return Manifest.from_nodes(nodes, project, graph.get("adapter_type"), graph.get("dbt_version"), graph["hooks"])


def _guess_project(nodes: list[DbtNode]) -> str:
    packages = {n.package_name for n in nodes if n.resource_type == "model"}
    return next(iter(packages)) if len(packages) == 1 else ""


def load_manifest(path: str | Path, cache: Path | None = None) -> Manifest:
    """Read and parse a manifest.json file.

    With ``cache`` (a directory), the graph part is kept there keyed by the file's path, size and mtime: the
    dag-processor re-parses DAG files every few seconds, and a large manifest costs more to decode than the
    rest of rendering.
    """
    path = Path(path)
    cached = _cached_graph_path(path, cache) if cache is not None else None
    if cached is not None and cached.is_file():
        try:
            graph = json.loads(cached.read_bytes())
            if graph.get("format") == _GRAPH_FORMAT:
                return _from_graph(graph, str(path))
        except (OSError, ValueError, ManifestError):
            pass  # unreadable or stale cache entry: parse the manifest again
    try:
        with path.open("rb") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise ManifestError(f"manifest not found at {path}; set ProjectConfig(manifest_path=...) to a file "
                            "written by `dbt parse` or `dbt compile`.") from None
    except (OSError, ValueError) as exc:
        raise ManifestError(f"manifest at {path} cannot be read as JSON ({exc}); regenerate it with `dbt parse`.") \
            from None
    graph = _graph(data, str(path))
    if cached is not None:
        _write_atomically(cached, json.dumps(graph, separators=(",", ":")).encode())
    return _from_graph(graph, str(path))


def _cached_graph_path(path: Path, cache: Path) -> Path | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    key = hashlib.sha256(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:32]
    return cache / f"graph-{key}.json"


def _write_atomically(target: Path, data: bytes) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(data)
        partial.replace(target)
    except OSError:
        pass  # a read-only or full cache directory only costs speed
