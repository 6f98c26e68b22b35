"""Splitting one capture between several dbt processes, and putting their captures back together.

dbt's work in a capture is Python under one lock, so a capture of many nodes is bound by one CPU. Several dbt
processes can share it, each running ``dbt build`` for its share of the selected nodes, if each answers exactly
as a single ``dbt build`` would. The one thing a process cannot see is what the others build: dbt's relation
cache knows a relation once a node of *this* process has built it, and macros ask that cache (``get_relation``)
without a request the recording endpoint could notice. So each process's endpoint lists the relations the other
shares build as they will be once built (a view stays a view, a table model is a table: :data:`BUILT_AS`).
Requests that do reach the endpoint (columns, queries) mark the reader to compile after its parents, as in a
single process (:mod:`cosmos_async.dbt.run_dependencies`).

A split is refused when that cannot be foreseen (a materialization whose relation kind is not known) or when a
node's SQL could depend on the split itself (code reading ``selected_resources`` or ``invocation_args_dict``).
After the capture, the run hooks every process recorded must agree (but for the datasets each created); where
they do not, or a node is missing, :func:`merge_shares` says why and the caller captures in one process.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cosmos_async.dbt.captured import Capture, LoadCapture, NodeCapture
from cosmos_async.dbt.endpoint import statement_code

# The kind of relation each materialization leaves behind (None: no relation). Others are refused.
BUILT_AS: dict[str, str | None] = {"view": "VIEW", "table": "TABLE", "incremental": "TABLE", "seed": "TABLE",
                                   "snapshot": "TABLE", "materialized_view": "MATERIALIZED_VIEW", "ephemeral": None,
                                   "test": None}
# Jinja names whose value differs between the processes of a split (each sees only its own selection).
_SPLIT_DEPENDENT = ("selected_resources", "invocation_args_dict")
_DBT_PACKAGES = ("dbt", "dbt_bigquery")
# dbt matches each selector against every node: more than this many per share would eat what the split saves.
MAX_PATTERNS = 200
_BUILT_KINDS = ("model", "seed", "snapshot", "test")  # what the capture's dbt build runs


@dataclass
class Share:
    """One process's part of a split capture: what it builds, and what the other processes build."""

    unique_ids: list[str]
    selectors: list[str]
    # [project, dataset, table, BigQuery table type] of every relation the other shares build.
    built_elsewhere: list[list[str]] = field(default_factory=list)

    def listed_relations(self) -> dict[tuple[str, str], dict[str, str]]:
        """(project, dataset) -> {table: type}: what the endpoint adds to that dataset's table listing."""
        listed: dict[tuple[str, str], dict[str, str]] = {}
        for project, dataset, table, kind in self.built_elsewhere:
            listed.setdefault((project, dataset), {})[table] = kind
        return listed


def plan_shares(parsed: Any, selected: Sequence[str], processes: int) -> list[Share] | str:
    """``processes`` shares of the ``selected`` node ids of dbt's Manifest ``parsed``, or why the capture must
    run in one process.

    A share is a run of the nodes in the order of their qualified names, so that a few ``fqn:`` patterns name
    exactly its nodes: dbt matches every selector against every node, and a thousand selectors would cost a
    process more than its share of the work."""
    chosen = set(selected)
    nodes = sorted((n for n in parsed.nodes.values() if _kind(n) in _BUILT_KINDS), key=_qualified)
    mine = [n for n in nodes if n.unique_id in chosen]
    if processes < 2 or len(mine) < 2 * processes:
        return f"{len(mine)} nodes are too few to split"
    built: dict[str, list[str] | None] = {}
    for node in mine:
        materialized = _materialized(node)
        if materialized not in BUILT_AS:
            return (f"{node.unique_id} is materialized as {materialized!r}, and what that leaves in the warehouse "
                    "cannot be foreseen by the other processes")
        kind = BUILT_AS[materialized]
        built[node.unique_id] = [node.database, node.schema, node.alias or node.name, kind] if kind else None
    texts = [getattr(n, "raw_code", "") or "" for n in parsed.nodes.values()]
    texts += [m.macro_sql for m in parsed.macros.values() if m.package_name not in _DBT_PACKAGES]
    for word in _SPLIT_DEPENDENT:
        if any(word in text for text in texts):
            return f"the project's code reads {word}, which would differ between the processes"
    names = [_qualified(n) for n in nodes]
    packages = {n.fqn[0] for n in nodes}
    # dbt also matches a pattern against the fqn without its package: a folder named like a package would match.
    if len(set(names)) < len(names) or any(len(n.fqn) > 2 and n.fqn[1] in packages for n in nodes):
        return "qualified names of the project's nodes overlap, so no pattern would name a share alone"
    owner = {n.unique_id: i * processes // len(mine) for i, n in enumerate(mine)}
    patterns = _cover(list(zip(names, (owner.get(n.unique_id) for n in nodes), strict=True)))
    if max(map(len, patterns.values())) > MAX_PATTERNS:
        return (f"the selected nodes are too scattered among the project's to name a share in at most {MAX_PATTERNS} "
                "patterns")
    shares = []
    for number in range(processes):
        ids = [uid for uid, o in owner.items() if o == number]
        elsewhere = [rel for uid, rel in built.items() if rel is not None and owner[uid] != number]
        shares.append(Share(ids, patterns.get(number, []), elsewhere))
    return shares


def _qualified(node: Any) -> str:
    """The node's fqn as dbt's fqn selector flattens it (dots inside a part split it too)."""
    return ".".join(node.fqn)


def _cover(leaves: list[tuple[str, int | None]]) -> dict[int, list[str]]:
    """Per owner, ``fqn:`` patterns matching exactly its leaves among all ``leaves`` (sorted names; owner None:
    not selected). A pattern is a shared prefix and ``*`` where every name under it has one owner; a lone name is
    written with its last character as a class, so that it does not also match the names below it."""
    out: dict[int, list[str]] = {}

    def walk(prefix: str, items: list[tuple[str, int | None]]) -> None:
        owners = {o for _, o in items}
        if owners == {None}:
            return
        # Without a dot dbt would also match the pattern against every node's bare name.
        if len(owners) == 1 and "." in prefix:
            (only,) = owners
            out.setdefault(only, []).append("fqn:" + _escaped(prefix) + "*")
            return
        rest = []
        for name, o in items:
            if len(name) == len(prefix):
                if o is not None:
                    out.setdefault(o, []).append("fqn:" + _lone(name))
            else:
                rest.append((name, o))
        start = 0
        while start < len(rest):
            char = rest[start][0][len(prefix)]
            end = start
            while end < len(rest) and rest[end][0][len(prefix)] == char:
                end += 1
            walk(prefix + char, rest[start:end])
            start = end

    walk("", leaves)
    return out


def _escaped(text: str) -> str:
    """``text`` literal in an fnmatch pattern."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)


def _lone(name: str) -> str:
    """A pattern matching ``name`` alone: a class makes dbt match the whole name (a plain one would also match the
    names below it, ``a.b`` matching ``a.b.c``)."""
    last = name[-1]
    if last in "!^":  # negation inside a class; such a name is written plainly
        return _escaped(name)
    return _escaped(name[:-1]) + f"[{last}]"


def merge_shares(parts: Sequence[Capture], shares: Sequence[Share]) -> Capture | str:
    """One Capture from each share's, as one process would have recorded it; or why they cannot be merged.

    Each dbt process has its own invocation id, which dbt puts in job labels: the helpers' are replaced by the
    first process's, so every job of the run carries one id as with one ``dbt build``."""
    parts = [parts[0], *(_renamed(part, parts[0].invocation_id) for part in parts[1:])]
    nodes: dict[str, NodeCapture] = {}
    for part, share in zip(parts, shares, strict=True):
        for uid in share.unique_ids:
            if uid not in part.nodes:
                return f"the process capturing {uid} did not record it"
            nodes[uid] = part.nodes[uid]
        # A node built in a share but not of it would have changed what that process's dbt knew of the warehouse.
        extra = sorted(set(part.nodes) - set(share.unique_ids))
        if extra:
            return f"a process captured {extra[0]}, which was not in its share"
    if any(part.on_run_start.loads or part.on_run_end.loads for part in parts):
        return "the run hooks upload data"
    starts = [_hooks(part.on_run_start, schemas=True) for part in parts]
    ends = [_hooks(part.on_run_end, schemas=False) for part in parts]
    for phase, seen in (("on-run-start", starts), ("on-run-end", ends)):
        if any(s[1] != seen[0][1] for s in seen[1:]):
            return f"the processes recorded different {phase} statements (the hooks depend on the selection)"
    schemas = list(dict.fromkeys(pair for created, _ in starts for pair in created))
    return Capture(nodes, _joined([p.on_run_start for p in parts], schemas), _joined([p.on_run_end for p in parts]),
                   parts[0].invocation_id)


def _kind(node: Any) -> str:
    return str(getattr(node.resource_type, "value", node.resource_type))


def _materialized(node: Any) -> str:
    kind = _kind(node)
    if kind in ("seed", "snapshot", "test"):
        return kind
    return str(getattr(node.config, "materialized", None))


def _is_schema_creation(phase: NodeCapture, i: int) -> bool:
    """A dataset dbt creates before the run (a process creates those of its own share's nodes)."""
    return statement_code(phase.statements[i]).startswith("create schema")


def _renamed(part: Capture, invocation_id: str) -> Capture:
    """``part`` with its invocation id replaced by ``invocation_id`` wherever dbt wrote it."""
    old = part.invocation_id
    if not old or not invocation_id or old == invocation_id:
        return part

    def text(value: str) -> str:
        return value.replace(old, invocation_id)

    def config(value: Any) -> Any:
        return json.loads(text(json.dumps(value))) if value is not None else None

    def node(n: NodeCapture) -> NodeCapture:
        return dataclasses.replace(
            n, statements=[text(s) for s in n.statements], configurations=[config(c) for c in n.configurations],
            loads=[LoadCapture(config(load.configuration), load.data, load.after) for load in n.loads])

    return Capture({uid: node(n) for uid, n in part.nodes.items()}, node(part.on_run_start), node(part.on_run_end),
                   invocation_id)


def _hooks(phase: NodeCapture, schemas: bool) -> tuple[list[str], Any]:
    """(dataset creations, everything else) of one process's run-hook phase, as (statement, configuration)."""
    created = [(sql, json.dumps(phase.configuration(i), sort_keys=True)) for i, sql in enumerate(phase.statements)
               if schemas and _is_schema_creation(phase, i)]
    rest = [(sql, phase.configuration(i)) for i, sql in enumerate(phase.statements)
            if not (schemas and _is_schema_creation(phase, i))]
    return created, (rest, phase.fallback)


def _joined(phases: Sequence[NodeCapture], schemas: Sequence[tuple[str, str]] = ()) -> NodeCapture:
    """The first process's phase with every process's dataset creations first, and every process's reads."""
    first = phases[0]
    rest = [(sql, first.configuration(i)) for i, sql in enumerate(first.statements)
            if not (schemas and _is_schema_creation(first, i))]
    return NodeCapture(statements=[*(sql for sql, _ in schemas), *(sql for sql, _ in rest)], fallback=first.fallback,
                       location=next((p.location for p in phases if p.location), None),
                       reads=list(dict.fromkeys(r for phase in phases for r in phase.reads)),
                       configurations=[*(json.loads(config) for _, config in schemas), *(c for _, c in rest)])
