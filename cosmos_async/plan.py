"""Selected dbt nodes → a plan of Airflow tasks (ids, groups, commands, edges). Pure Python, no Airflow objects.

Rules (Cosmos users will recognise them):
- one task per selected model (``<name>_run``), seed (``<name>_seed``) and snapshot (``<name>_snapshot``);
- ephemeral models get no task; edges pass through them to the nodes they feed;
- TestBehavior.AFTER_EACH: a node with tests becomes a task group ``<name>`` holding its task and ``test``,
  and its children wait for the tests; a test over several parents gets its own ``<test>_test`` task;
- TestBehavior.AFTER_ALL: one ``<project>_test`` task after every other task;
- SourceRenderingBehavior ALL / WITH_TESTS_OR_FRESHNESS: a ``<source>_<table>_source`` task per rendered source,
  upstream of every task reading it; its tests attach to it as a model's do.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from cosmos_async.config import SourceRenderingBehavior, TestBehavior
from cosmos_async.project.manifest import DbtNode, Manifest

BUILD_COMMANDS = {"model": "run", "seed": "seed", "snapshot": "snapshot", "source": "source"}
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class TaskPlan:
    """One Airflow task to create."""

    key: str  # the full task id (group prefix included)
    task_id: str  # id inside its group
    group_id: str | None
    command: str  # run / seed / snapshot / source / test
    node_ids: tuple[str, ...]  # dbt nodes this task executes
    upstream: tuple[str, ...]  # keys of the plans this one waits for

    @property
    def is_test(self) -> bool:
        return self.command == "test"


def safe_id(label: str) -> str:
    """An Airflow-safe id for a dbt name; names that had to change get a short hash so they stay unique."""
    cleaned = _UNSAFE.sub("_", label)[:200]
    if cleaned == label:
        return label
    return f"{cleaned}__{hashlib.sha1(label.encode()).hexdigest()[:8]}"


def _ancestors_through_ephemerals(manifest: Manifest, node_id: str) -> set[str]:
    """Every parent of the node, and theirs through ephemeral models (which dbt inlines), up to the first
    non-ephemeral ancestor on each path."""
    found: set[str] = set()
    stack = list(manifest.nodes[node_id].depends_on)
    while stack:
        parent = stack.pop()
        if parent in found or parent not in manifest.nodes:
            continue
        found.add(parent)
        if manifest.nodes[parent].materialized == "ephemeral":
            stack.extend(manifest.nodes[parent].depends_on)
    return found


def _task_ancestors(manifest: Manifest, node_id: str, has_task: set[str]) -> list[str]:
    """Nearest ancestors that have a task, looking through ephemeral models (which never get one)."""
    return sorted(p for p in _ancestors_through_ephemerals(manifest, node_id) if p in has_task)


def _topological(manifest: Manifest, ids: set[str]) -> list[str]:
    """``ids`` in dependency order; the walk goes through every ancestor so edges via ephemerals count."""
    order: list[str] = []
    seen: set[str] = set()
    for start in sorted(ids):
        stack = [(start, False)]
        while stack:
            node_id, done = stack.pop()
            if done:
                if node_id in ids:
                    order.append(node_id)
                continue
            if node_id in seen:
                continue
            seen.add(node_id)
            stack.append((node_id, True))
            stack.extend((p, False) for p in sorted(manifest.nodes[node_id].depends_on, reverse=True)
                         if p in manifest.nodes and p not in seen)
    return order


def rendered_sources(manifest: Manifest, selected: set[str], behavior: SourceRenderingBehavior,
                     pruning: bool, everything: bool) -> set[str]:
    """The sources that get a task: those feeding a selected node (through ephemerals too) and, without
    ``pruning`` and with no selectors (``everything``), the project's other sources as well."""
    if behavior == SourceRenderingBehavior.NONE:
        return set()
    nodes = manifest.nodes
    sources = {uid for uid, n in nodes.items() if n.resource_type == "source"}
    feeding = {parent for uid in selected if nodes[uid].resource_type != "test"
               for parent in _ancestors_through_ephemerals(manifest, uid) if parent in sources}
    candidates = feeding if pruning or not everything else sources
    if behavior == SourceRenderingBehavior.ALL:
        return candidates
    tested = {parent for uid in selected if nodes[uid].resource_type == "test" for parent in nodes[uid].depends_on}
    return {uid for uid in candidates if nodes[uid].has_freshness or uid in tested}


def plan_tasks(manifest: Manifest, selected: set[str], test_behavior: TestBehavior,
               sources: set[str] = frozenset()) -> list[TaskPlan]:
    """Plans in dependency order for the selected unique ids, plus a task per source in ``sources``."""
    nodes = manifest.nodes
    builds = {uid for uid in selected if nodes[uid].resource_type in BUILD_COMMANDS
              and nodes[uid].resource_type != "source" and nodes[uid].materialized != "ephemeral"} | set(sources)
    tests = sorted(uid for uid in selected if nodes[uid].resource_type == "test")

    attached: dict[str, list[str]] = {}
    detached: list[str] = []
    if test_behavior == TestBehavior.AFTER_EACH:
        for test_id in tests:
            parents = _task_ancestors(manifest, test_id, builds)
            if len(parents) == 1:
                attached.setdefault(parents[0], []).append(test_id)
            else:
                detached.append(test_id)

    end_key: dict[str, str] = {}  # build node → key of the task its children wait for
    plans: list[TaskPlan] = []
    for uid in _topological(manifest, builds):
        node = nodes[uid]
        command = BUILD_COMMANDS[node.resource_type]
        upstream = tuple(end_key[p] for p in _task_ancestors(manifest, uid, builds))
        name = safe_id(task_name(node))
        if uid in attached:
            run = TaskPlan(f"{name}.{command}", command, name, command, (uid,), upstream)
            test = TaskPlan(f"{name}.test", "test", name, "test", tuple(attached[uid]), (run.key,))
            plans += [run, test]
            end_key[uid] = test.key
        else:
            task_id = f"{name}_{command}"
            plans.append(TaskPlan(task_id, task_id, None, command, (uid,), upstream))
            end_key[uid] = task_id

    for test_id in detached:
        task_id = f"{safe_id(nodes[test_id].label)}_test"
        upstream = tuple(end_key[p] for p in _task_ancestors(manifest, test_id, builds))
        plans.append(TaskPlan(task_id, task_id, None, "test", (test_id,), upstream))

    if test_behavior == TestBehavior.AFTER_ALL and tests:
        task_id = f"{safe_id(manifest.project_name or 'dbt')}_test"
        plans.append(TaskPlan(task_id, task_id, None, "test", tuple(tests), tuple(p.key for p in plans)))
    return plans


def task_name(node: DbtNode) -> str:
    """The name a node's task (or task group) is called by: Cosmos's ``<source>_<table>`` for a source."""
    if node.resource_type == "source":
        return f"{node.source_name}_{node.name}" if node.source_name else node.name
    return node.label


def node_selector(node: DbtNode) -> str:
    """A dbt --select argument matching exactly this node."""
    if node.resource_type == "test":
        return node.name
    if node.resource_type == "source":
        return f"source:{node.package_name}.{node.source_name}.{node.name}"
    return "fqn:" + ".".join(node.fqn) if node.fqn else node.name
