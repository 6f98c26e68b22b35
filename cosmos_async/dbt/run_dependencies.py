"""Nodes whose captured SQL came from relations that other parts of the same run build: never run it stale.

The capture runs dbt once, recording every write instead of running it, so a read made while compiling a node
sees the warehouse as it was before the run. When that read touches a relation that another selected node
(or the on-run-start hooks) writes in this run, what dbt generated from it may be wrong: such a node is marked
to be compiled again on a worker once its parents have run (its jobs then run in the triggerer), or run there by
dbt where that cannot be done (the LOCAL fallback).

Writers are known from what the capture recorded (each node's statements and load jobs, the hooks' scripts)
and from the manifest's relation names (a node whose own capture failed still builds its relation).
A node's reads of what it writes itself are not dependencies; the on-run-start phase runs before every node,
so its own reads never are either.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from cosmos_async.dbt.sql_relations import Relation, relations_written

if TYPE_CHECKING:
    from cosmos_async.dbt.captured import Capture, NodeCapture
    from cosmos_async.project.manifest import Manifest

ON_RUN_START_HOOKS = "the on-run-start hooks"
ON_RUN_END = "on-run-end"


def run_writers(capture: Capture, manifest: Manifest | None, project: str) -> dict[Relation, set[str]]:
    """Every relation written in this run (case-folded keys) → who writes it: node ids or the on-run-start hooks."""
    writers: dict[Relation, set[str]] = {}

    def add(relations: Iterable[Relation], who: str) -> None:
        for relation in relations:
            writers.setdefault(relation.key(), set()).add(who)

    add(_written(capture.on_run_start, project), ON_RUN_START_HOOKS)
    for unique_id, node in capture.nodes.items():
        add(_written(node, project), unique_id)
        built = manifest.nodes.get(unique_id) if manifest is not None else None
        if built is not None and built.relation_name is not None and built.database and built.schema:
            add([Relation(built.database, built.schema, built.alias or built.name)], unique_id)
    return writers


def _written(node: NodeCapture, project: str) -> set[Relation]:
    found = {relation for sql in node.statements for relation in relations_written(sql, project)}
    for load in node.loads:
        table = (load.configuration.get("load") or {}).get("destinationTable") or {}
        if table.get("datasetId") and table.get("tableId"):
            found.add(Relation(table.get("projectId") or project, table["datasetId"], table["tableId"]))
    return found


def _writers_of(read: Relation, writers: Mapping[Relation, set[str]]) -> set[str]:
    key = read.key()
    if read.contents:
        return {who for relation, names in writers.items() if key.holds(relation) for who in names}
    # A dataset's own metadata changes with CREATE/ALTER SCHEMA; those of the on-run-start phase (dbt's own
    # schema creation included) are done before any node runs, so a node never waits on them.
    names = writers.get(key, set())
    return names if read.table is not None else names - {ON_RUN_START_HOOKS}


def _ancestors(manifest: Manifest, unique_id: str) -> set[str]:
    seen: set[str] = set()
    stack = list(manifest.nodes[unique_id].depends_on) if unique_id in manifest.nodes else []
    while stack:
        parent = stack.pop()
        if parent not in seen:
            seen.add(parent)
            stack.extend(manifest.nodes[parent].depends_on if parent in manifest.nodes else ())
    return seen


def dependency_reason(unique_id: str, found: Mapping[Relation, set[str]], manifest: Manifest | None) -> str:
    """Why a node must be compiled after others, naming each relation and who builds it."""
    upstream = _ancestors(manifest, unique_id) if manifest is not None and unique_id in manifest.nodes else None
    parts = []
    for relation in sorted(found):
        names = sorted(found[relation])
        builders = " and ".join(names)
        verb = "build" if len(names) > 1 or names == [ON_RUN_START_HOOKS] else "builds"
        part = f"{relation}, which {builders} {verb} in this run"
        unordered = [n for n in names if upstream is not None and n != ON_RUN_START_HOOKS and n not in upstream]
        if unordered:
            verb = "is" if len(unordered) == 1 else "are"
            part += (f" ({', '.join(unordered)} {verb} not upstream of it in dbt's graph, so nothing makes it "
                     "wait: add a ref() to it or a `-- depends_on: {{ ref(...) }}` comment)")
        parts.append(part)
    reason = f"its SQL depends on {'; and on '.join(parts)}"
    if unique_id == ON_RUN_END:
        return reason + ": the hook's SQL cannot be captured before the run"
    return reason + ": compiled on a worker after it"


def mark_run_dependencies(capture: Capture, manifest: Manifest | None, project: str) -> dict[str, str]:
    """Give every node (and on-run-end) that read what another part of the run writes a fallback naming it;
    return those reasons by node id."""
    writers = run_writers(capture, manifest, project)
    marked: dict[str, str] = {}
    for unique_id, node in [*capture.nodes.items(), (ON_RUN_END, capture.on_run_end)]:
        found: dict[Relation, set[str]] = {}
        for read in node.reads:
            names = _writers_of(read, writers) - {unique_id}
            if names:
                found.setdefault(read, set()).update(names)
        if not found:
            continue
        reason = dependency_reason(unique_id, found, manifest)
        # What else went wrong is usually the consequence (a parent's relation not there yet): keep it after.
        node.fallback = f"{reason}; {node.fallback}" if node.fallback else reason
        node.after_parents = True
        marked[unique_id] = reason
    return marked
