"""dbt node selection (`--select` / `--exclude`) over a parsed manifest, in pure Python.

Mirrors dbt-core 1.11's `dbt.graph` (cli.py, selector_spec.py, selector_methods.py, selector.py) with the default
eager indirect selection, so that `select_nodes` returns what `dbt ls --select ... --exclude ...` lists for models,
seeds, snapshots and tests. Parsing a DAG file must not import dbt, hence this re-implementation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import PurePosixPath
from typing import Any

from cosmos_async.errors import SelectionError
from cosmos_async.project.manifest import RUNNABLE_TYPES, DbtNode, Manifest

# dbt's own grammar (selector_spec.RAW_SELECTOR_PATTERN): [@][n+][method[.arg...]:]value[+n]
_SPEC = re.compile(
    r"\A(?P<childrens_parents>@)?(?P<parents>(?P<parents_depth>\d*)\+)?"
    r"((?P<method>[\w.]+):)?(?P<value>.*?)(?P<children>\+(?P<children_depth>\d*))?\Z"
)
_WILDCARDS = ("*", "?", "[", "]")
# dbt NodeType values: resource_type: accepts these, anything else is an error in dbt too.
_NODE_TYPES = frozenset({"model", "analysis", "test", "snapshot", "operation", "seed", "rpc", "sql_operation", "doc",
                         "source", "macro", "exposure", "metric", "group", "saved_query", "semantic_model",
                         "unit_test", "fixture", "function"})
# Valid dbt methods that need data a manifest-only, DAG-parse-time selector does not have.
_UNSUPPORTED = {
    "state": "it compares with a previous run's manifest",
    "result": "it reads a previous run's run_results.json",
    "source_status": "it reads sources.json from `dbt source freshness`",
    "exposure": "exposures are not read from the manifest",
    "metric": "metrics are not read from the manifest",
    "semantic_model": "semantic models are not read from the manifest",
    "saved_query": "saved queries are not read from the manifest",
    "unit_test": "unit tests are not read from the manifest",
    "test_name": "generic test names (test_metadata) are not read from the manifest",
    "version": "model version metadata (latest_version) is not read from the manifest",
}


@dataclass(frozen=True)
class _Criteria:
    """One selector term such as `2+tag:finance+`."""

    raw: str
    method: str
    arguments: tuple[str, ...]
    value: str
    childrens_parents: bool
    parents: bool
    parents_depth: int | None
    children: bool
    children_depth: int | None


def _default_method(value: str) -> str:
    # dbt: a value holding a path separator is a path, a code file's name is a file, anything else an fqn.
    if "/" in value:
        return "path"
    if value.lower().endswith((".sql", ".py", ".csv")):
        return "file"
    return "fqn"


def _depth(raw: str | None) -> int | None:
    return int(raw) if raw else None  # "" (a bare "+") means unlimited


def parse_criteria(raw: str) -> _Criteria:
    """Parse one selector term; raise :class:`SelectionError` for what dbt rejects or cosmos-async cannot do."""
    match = _SPEC.match(raw)
    if match is None:
        raise SelectionError(f"invalid selector {raw!r}")
    groups = match.groupdict()
    if groups["method"] is None:
        method, arguments = _default_method(groups["value"]), ()
    else:
        method, *rest = groups["method"].split(".")
        arguments = tuple(rest)
        if method in _UNSUPPORTED:
            raise SelectionError(f"selector {raw!r}: method '{method}' is not supported by cosmos-async "
                                 f"({_UNSUPPORTED[method]}); select the nodes another way.")
        if method not in _METHODS:
            raise SelectionError(f"selector {raw!r}: '{method}' is not a valid node selection method "
                                 f"(valid: {', '.join(sorted(_METHODS))}).")
    if groups["childrens_parents"] and groups["children"]:
        raise SelectionError(f'selector {raw!r}: the "@" prefix and the "+" suffix are incompatible.')
    return _Criteria(
        raw=raw, method=method, arguments=arguments, value=groups["value"],
        childrens_parents=bool(groups["childrens_parents"]),
        parents=bool(groups["parents"]), parents_depth=_depth(groups["parents_depth"]),
        children=bool(groups["children"]), children_depth=_depth(groups["children_depth"]),
    )


# --- selection methods: (manifest, nodes, arguments, value) -> matching unique ids ------------------------------

_Nodes = Mapping[str, DbtNode]


def _non_sources(nodes: _Nodes) -> Iterator[DbtNode]:
    return (n for n in nodes.values() if n.resource_type != "source")


def _fqn_matches(fqn: Sequence[str], selector: str, versioned: bool) -> bool:
    """dbt's `is_selected_node`: leaf name, fqn prefix, or a wildcard over the rest of the fqn."""
    if versioned:
        if fqn[-2] == selector or "_".join(fqn[-2:]) == "_".join(selector.split(".")[-2:]):
            return True
    elif fqn[-1] == selector:
        return True
    flat = [item for segment in fqn for item in segment.split(".")]
    parts = selector.split(".")
    if len(flat) < len(parts):
        return False
    for i, part in enumerate(parts):
        if any(w in part for w in _WILDCARDS):
            if fnmatchcase(".".join(flat[i:]), ".".join(parts[i:])):
                return True
            # A bare wildcard (no dot) also matches the leaf name alone, however deep the node is.
            return "." not in selector and fnmatchcase(fqn[-2] if versioned else fqn[-1], selector)
        if flat[i] != part:
            return False
    return True


def _by_fqn(manifest: Manifest, nodes: _Nodes, args: tuple[str, ...], value: str) -> Iterator[str]:
    for node in _non_sources(nodes):
        versioned = node.resource_type == "model" and node.version is not None
        # Also matched without the package name, so `staging.stg_orders` works from any package.
        if _fqn_matches(node.fqn, value, versioned) or _fqn_matches(node.fqn[1:], value, versioned):
            yield node.unique_id


def _by_tag(manifest: Manifest, nodes: _Nodes, args: tuple[str, ...], value: str) -> Iterator[str]:
    return (n.unique_id for n in nodes.values() if any(fnmatchcase(tag, value) for tag in n.tags))


def _by_package(manifest: Manifest, nodes: _Nodes, args: tuple[str, ...], value: str) -> Iterator[str]:
    value = manifest.project_name if value == "this" and manifest.project_name else value
    return (n.unique_id for n in nodes.values() if fnmatchcase(n.package_name, value))


def _by_file(manifest: Manifest, nodes: _Nodes, args: tuple[str, ...], value: str) -> Iterator[str]:
    for node in nodes.values():
        path = PurePosixPath(node.original_file_path)
        if fnmatchcase(path.name, value) or fnmatchcase(path.stem, value):
            yield node.unique_id


def _glob_matches(pattern: Sequence[str], path: Sequence[str], is_dir: bool) -> bool:
    """Whether `Path.glob(pattern)` (Python 3.11 rules) under the project root would yield `path`."""
    if not pattern:
        return not path
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        # `**` yields a directory and all directories below it: consumed segments are directories.
        return any(_glob_matches(rest, path[k:], is_dir) for k in range(len(path) + 1)
                   if rest or k < len(path) or is_dir)
    return bool(path) and fnmatchcase(path[0], head) and _glob_matches(rest, path[1:], is_dir)


def _by_path(manifest: Manifest, nodes: _Nodes, args: tuple[str, ...], value: str) -> Iterator[str]:
    # dbt globs the project directory; here the files are those the manifest knows, and their directories.
    pure = PurePosixPath(value)
    if pure.is_absolute():
        raise SelectionError(f"selector 'path:{value}': the path must be relative to the dbt project.")
    pattern = pure.parts
    if not pattern:
        raise SelectionError(f"selector 'path:{value}': empty path pattern.")
    for node in nodes.values():
        file = PurePosixPath(node.original_file_path).parts
        if _glob_matches(pattern, file, is_dir=False) or any(
                _glob_matches(pattern, file[:k], is_dir=True) for k in range(len(file))):
            yield node.unique_id


def _config_value_matches(value: Any, selector: str, case_insensitive: bool) -> bool:
    # Same comparisons as dbt's ConfigSelectorMethod, including "true"/"false" matching booleans.
    is_true, is_false = selector.upper() == "TRUE", selector.upper() == "FALSE"

    def equal(item: Any) -> bool:
        if case_insensitive:
            return isinstance(item, str) and item.upper() == selector.upper()
        return item == selector

    if isinstance(value, list):
        return any(equal(item) for item in value) or (is_true and True in value) or (is_false and False in value)
    return equal(value) or (is_true and value is True) or (is_false and value is False)


def _by_config(manifest: Manifest, nodes: _Nodes, args: tuple[str, ...], value: str) -> Iterator[str]:
    for node in nodes.values():
        found: Any = node.config
        for key in args:
            if not isinstance(found, Mapping) or key not in found:
                break
            found = found[key]
        else:
            if _config_value_matches(found, value, case_insensitive=args == ("severity",)):
                yield node.unique_id


def _by_resource_type(manifest: Manifest, nodes: _Nodes, args: tuple[str, ...], value: str) -> Iterator[str]:
    if value not in _NODE_TYPES:
        raise SelectionError(f"invalid resource_type selector {value!r} (valid: {', '.join(sorted(_NODE_TYPES))}).")
    return (n.unique_id for n in nodes.values() if n.resource_type == value)


def _by_source(manifest: Manifest, nodes: _Nodes, args: tuple[str, ...], value: str) -> Iterator[str]:
    parts = value.split(".")
    if len(parts) > 3:
        raise SelectionError(f"invalid source selector {value!r}: use source_name, source_name.table or "
                             "package.source_name.table.")
    if len(parts) == 1:
        package, source, table = "*", parts[0], "*"
    elif len(parts) == 2:
        package, (source, table) = "*", parts
    else:
        package, source, table = parts
    for node in nodes.values():
        if (node.resource_type == "source" and fnmatchcase(node.package_name, package)
                and fnmatchcase(node.source_name or "", source) and fnmatchcase(node.name, table)):
            yield node.unique_id


def _by_group(manifest: Manifest, nodes: _Nodes, args: tuple[str, ...], value: str) -> Iterator[str]:
    for node in _non_sources(nodes):
        group = node.config.get("group")
        if group and fnmatchcase(group, value):
            yield node.unique_id


def _by_access(manifest: Manifest, nodes: _Nodes, args: tuple[str, ...], value: str) -> Iterator[str]:
    return (n.unique_id for n in nodes.values() if n.resource_type == "model" and n.config.get("access") == value)


def _by_test_type(manifest: Manifest, nodes: _Nodes, args: tuple[str, ...], value: str) -> Iterator[str]:
    # dbt tests `value in ("data")`, a substring test on a string: kept as is so results stay equal.
    if value in ("generic", "schema"):
        wanted = {"generic"}
    elif value in "data":
        wanted = {"generic", "singular"}
    elif value in "singular":
        wanted = {"singular"}
    elif value in "unit":
        raise SelectionError(f"selector 'test_type:{value}': {_UNSUPPORTED['unit_test']}.")
    else:
        raise SelectionError(f"invalid test_type selector {value!r}: expected generic, singular, unit or data.")
    for node in nodes.values():
        # Singular tests are SQL files; generic tests are defined in property YAML files.
        kind = "singular" if node.original_file_path.endswith(".sql") else "generic"
        if node.resource_type == "test" and kind in wanted:
            yield node.unique_id


_Method = Callable[[Manifest, _Nodes, tuple[str, ...], str], Iterable[str]]
_METHODS: dict[str, _Method] = {
    "fqn": _by_fqn, "tag": _by_tag, "package": _by_package, "file": _by_file, "path": _by_path,
    "config": _by_config, "resource_type": _by_resource_type, "source": _by_source, "group": _by_group,
    "access": _by_access, "test_type": _by_test_type,
}


# --- the graph and set algebra -----------------------------------------------------------------------------------


class _Graph:
    """The enabled nodes and their edges, walked the way dbt's `Graph` walks them."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.nodes: dict[str, DbtNode] = {uid: n for uid, n in manifest.nodes.items() if n.enabled}
        self.parents: dict[str, tuple[str, ...]] = {
            uid: tuple(p for p in n.depends_on if p in self.nodes) for uid, n in self.nodes.items()}
        self.children: dict[str, list[str]] = {uid: [] for uid in self.nodes}
        for uid, parents in self.parents.items():
            for parent in parents:
                self.children[parent].append(uid)

    @staticmethod
    def _walk(edges: Mapping[str, Sequence[str]], start: set[str], depth: int | None) -> set[str]:
        # Layer by layer, like dbt: start nodes count only when reached from another start node.
        found: set[str] = set()
        layer, i = set(start), 0
        while layer and (depth is None or i < depth):
            layer = {nxt for uid in layer for nxt in edges[uid] if nxt not in found}
            found |= layer
            i += 1
        return found

    def criteria(self, spec: _Criteria) -> set[str]:
        """Nodes selected by one term, with its graph operators and the tests of every selected node."""
        selected = set(_METHODS[spec.method](self.manifest, self.nodes, spec.arguments, spec.value))
        extra: set[str] = set()
        if spec.childrens_parents:
            down = self._walk(self.children, selected, None) | selected
            extra |= self._walk(self.parents, down, None) | down
        if spec.parents:
            extra |= self._walk(self.parents, selected, spec.parents_depth)
        if spec.children:
            extra |= self._walk(self.children, selected, spec.children_depth)
        selected |= extra
        # Eager indirect selection: a test whose parent is selected is selected too.
        return selected | {child for uid in selected for child in self.children[uid]
                           if self.nodes[child].resource_type == "test"}

    def union(self, terms: Sequence[Sequence[_Criteria]]) -> set[str]:
        """Union of the terms; the criteria inside one term are intersected."""
        result: set[str] = set()
        for term in terms:
            result |= set.intersection(*(self.criteria(spec) for spec in term))
        return result


def parse_union(items: Sequence[str]) -> list[list[_Criteria]]:
    """dbt's parse_union: every item and its space-separated words are unioned, comma-joined parts intersected."""
    if isinstance(items, str):
        raise SelectionError(f"select/exclude must be a list of selector strings, not the string {items!r}.")
    # An empty word (from doubled spaces) matches nothing in dbt: skipping it leaves the union unchanged.
    return [[parse_criteria(part) for part in word.split(",")] for item in items for word in item.split(" ") if word]


def select_nodes(manifest: Manifest, select: Sequence[str], exclude: Sequence[str]) -> set[str]:
    """Unique ids of the enabled models, seeds, snapshots and tests that `dbt ls --select/--exclude` would list."""
    # Parse both lists before selecting, as dbt does: a bad selector fails whatever the graph holds.
    included_terms, excluded_terms = parse_union(select), parse_union(exclude)
    graph = _Graph(manifest)
    included = graph.union(included_terms) if select else set(graph.nodes)
    chosen = included - graph.union(excluded_terms)
    return {uid for uid in chosen if graph.nodes[uid].resource_type in RUNNABLE_TYPES}
