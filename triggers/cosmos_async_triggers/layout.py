"""Where a run's files live under the remote target path, and how jobs are named.

Shared by the setup task (which writes), the triggers (which read) and teardown (which deletes), so the
three can never disagree. Every name that comes from a user (DAG id, run id, node id) is encoded into one
safe path segment: no separator, no ``..``, distinct inputs give distinct segments.
"""

from __future__ import annotations

import hashlib
import re

INDEX_NAME = "index.json"
NODES_DIR = "nodes"
# Nodes compiled again on a worker once their parents ran (their SQL reads what those build), each task's try with
# its own index and files.
RECOMPILED_DIR = "recompiled"
# What a DbtDag (no task group) writes directly in its run directory.
DAG_LEVEL_NAMES = frozenset({INDEX_NAME, NODES_DIR, RECOMPILED_DIR})
# The most load data a trigger sends in one multipart upload. The whole body is built in the triggerer's memory,
# shared by every trigger, so the capture leaves larger seeds to LOCAL dbt and the trigger refuses them.
MAX_MULTIPART_BYTES = 100 * 1024 * 1024
_SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9._-]")
_JOB_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def segment(value: str) -> str:
    """Encode ``value`` as a single path segment (``~XX`` escapes, injective)."""
    if not value:
        raise ValueError("an empty name cannot be a path segment")
    if _SAFE.fullmatch(value):
        return value
    encoded = _UNSAFE_CHAR.sub(lambda m: "".join(f"~{b:02X}" for b in m.group().encode()), value)
    # A leading dot would make '.' or '..' or a hidden file: escape it too.
    return "~2E" + encoded[1:] if encoded.startswith(".") else encoded


def run_prefix(remote_root: str, dag_id: str, run_id: str, group_id: str | None = None) -> str:
    """The run's own namespace: ``{remote_root}/{dag_id}/{run_id}``, and ``/{group_id}`` below it for a task group.

    Two dbt task groups of one DAG run each set up, read and tear down their own directory; a DbtDag's files
    (``index.json`` and ``nodes/``) sit directly in the run directory, where no group directory can collide with
    them (see :data:`DAG_LEVEL_NAMES`).
    """
    root = remote_root.rstrip("/")
    if not root:
        raise ValueError("remote target path is empty")
    prefix = f"{root}/{segment(dag_id)}/{segment(run_id)}"
    if group_id is None:
        return prefix
    group = segment(group_id)
    # A group named "nodes" or "index.json" would share a path with a DbtDag's files in the same run directory.
    return f"{prefix}/{'~' + group if group in DAG_LEVEL_NAMES else group}"


def index_path(prefix: str) -> str:
    return f"{prefix}/{INDEX_NAME}"


def node_relpath(unique_id: str) -> str:
    """Path of a node's SQL relative to the run prefix."""
    return f"{NODES_DIR}/{segment(unique_id)}.sql"


def step_relpath(unique_id: str, step: int, extension: str) -> str:
    """Path of step ``step`` of a node that runs in several steps (a script, or a load job's data).

    ``~s`` never occurs in a segment (escapes are ``~`` and two hex digits), so these never collide with
    :func:`node_relpath` of another node.
    """
    return f"{NODES_DIR}/{segment(unique_id)}~s{step}.{extension}"


def recompiled_dir(task_id: str, map_index: int, try_number: int) -> str:
    """Directory, relative to the run prefix, of one task try's recompiled nodes (its ``index.json`` and files)."""
    return f"{RECOMPILED_DIR}/{segment(task_id)}~m{map_index}~t{try_number}"


def job_id_base(dag_id: str, task_id: str, run_id: str, map_index: int = -1) -> str:
    """A BigQuery job id unique to (dag, task, run, map index), readable by its task id prefix."""
    digest = hashlib.sha256(f"{dag_id}\x00{task_id}\x00{run_id}\x00{map_index}".encode()).hexdigest()[:24]
    readable = _JOB_UNSAFE.sub("_", task_id)[:80]
    return f"cosmos_async_{readable}_{digest}"
