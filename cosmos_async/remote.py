"""The remote target path: one namespace per DAG run, uploaded with an index, deleted by teardown.

fsspec does the I/O (gcsfs for ``gs://``, the local filesystem for ``file://``, ``memory://`` in one process).
Paths come from :mod:`cosmos_async_triggers.layout`, shared with the triggers that read them.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any

from cosmos_async_triggers.layout import (
    DAG_LEVEL_NAMES,
    INDEX_NAME,
    index_path,
    node_relpath,
    recompiled_dir,
    run_prefix,
    step_relpath,
)

from cosmos_async.config import cosmos_setting
from cosmos_async.dbt.captured import Capture, LoadCapture, NodeCapture, ScriptCapture
from cosmos_async.errors import ConfigurationError, CosmosAsyncError

SUPPORTED_SCHEMES = ("gs", "gcs", "file", "memory")
# Version 1: one script per node. Version 2 adds entries with "steps" (scripts and load jobs, see upload_capture);
# an index without such entries stays version 1, so triggerers of either version read it.
INDEX_VERSION = 1
STEPS_INDEX_VERSION = 2
HOOK_IDS = {"on-run-start": "on_run_start", "on-run-end": "on_run_end"}


class RemoteStorageError(CosmosAsyncError):
    """The remote target path cannot be written, read or cleaned."""


@dataclass(frozen=True)
class RemoteTarget:
    """The configured remote target path and the connection used to reach it."""

    url: str
    conn_id: str | None = None

    @classmethod
    def from_config(cls, url: str | None = None, conn_id: str | None = None) -> RemoteTarget:
        """Resolve per-DAG overrides, then ``[cosmos] remote_target_path`` / ``remote_target_path_conn_id``."""
        url = url or cosmos_setting("remote_target_path")
        conn_id = conn_id or cosmos_setting("remote_target_path_conn_id")
        if not url or not url.strip():
            raise ConfigurationError(
                "ExecutionMode.AIRFLOW_ASYNC needs a remote target path: set AIRFLOW__COSMOS__REMOTE_TARGET_PATH "
                "(e.g. gs://my-bucket/cosmos-async) or operator_args={'remote_target_path': ...}."
            )
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if scheme not in SUPPORTED_SCHEMES:
            # memory:// is accepted (tests, one process) but never suggested: the triggerer cannot read it.
            raise ConfigurationError(
                f"remote target path {url!r} has an unsupported scheme ({f'{scheme}://' if scheme else 'none'}); "
                "set AIRFLOW__COSMOS__REMOTE_TARGET_PATH (or operator_args['remote_target_path']) to "
                "gs://bucket/prefix, or to file:///path on a disk that the workers and the triggerer share."
            )
        if scheme in ("gs", "gcs") and not conn_id:
            raise ConfigurationError(
                "a gs:// remote target path needs a connection: set AIRFLOW__COSMOS__REMOTE_TARGET_PATH_CONN_ID "
                "to a google_cloud_platform connection id (also with profiles_yml_filepath: the setup task and "
                "the triggerer reach the bucket through that connection, not through the dbt profile)."
            )
        return cls(url.strip(), conn_id or None)

    def filesystem(self) -> tuple[Any, str]:
        """(fsspec filesystem, root path inside it)."""
        import fsspec

        return fsspec.core.url_to_fs(self.url, **self.storage_options())

    def storage_options(self) -> dict[str, Any]:
        if self.url.startswith("file://"):
            return {"auto_mkdir": True}
        if not self.url.startswith(("gs://", "gcs://")):
            return {}
        from cosmos_async.profiles import connection_extras, gcs_storage_options

        extras = connection_extras(self.conn_id, named_by="AIRFLOW__COSMOS__REMOTE_TARGET_PATH_CONN_ID (or "
                                   "operator_args['remote_target_path_conn_id'])")
        return gcs_storage_options(extras, self.conn_id)

    def run_prefix(self, dag_id: str, run_id: str, group_id: str | None = None) -> str:
        return run_prefix(self.url, dag_id, run_id, group_id)


def _strip_scheme(fs: Any, url: str) -> str:
    return fs._strip_protocol(url)


def upload_capture(target: RemoteTarget, dag_id: str, run_id: str, capture: Capture,
                   wanted: set[str], group_id: str | None = None,
                   target_settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Upload each wanted node's files and the hooks, then the index (last: its presence means complete).

    A node without loads is one script: its entry has ``path``/``sha256``. A node with loads (a seed) has
    ``steps`` instead, in dbt's order: ``{"kind": "query", "path", "sha256", ...}`` for a script and
    ``{"kind": "load", "configuration", "path", "sha256", ...}`` for a load job whose data is the file at path.
    A script (entry or step) also has the ``configuration`` dbt-bigquery sent with its statements' query jobs
    (:func:`cosmos_async.dbt.endpoint.replayable_configuration`), which the trigger replays; a node's statements are
    split into several scripts where dbt changed it between them.
    """
    with RunUpload(target, dag_id, run_id, wanted, group_id) as upload:
        return upload.finish(capture, target_settings)


_WRITE_HINT = ("Check that the bucket/path exists, that its endpoint is reachable from the worker and that the "
               "connection may write to it.")


class RunUpload:
    """A run's files going up while the capture runs: a bounded pool fed node by node, the index written last.

    :meth:`node_captured` (dbt's event callback, as each node finishes) queues that node's files; :meth:`finish`
    builds every entry from the final capture, uploads what is missing or changed since (a node retried in a
    later capture pass, or marked to compile later), waits for all of it and only then writes the index. A failed
    upload makes :meth:`finish` raise naming the file, and no index is written: the triggers read nothing of it.
    """

    def __init__(self, target: RemoteTarget, dag_id: str, run_id: str, wanted: set[str],
                 group_id: str | None = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.fs, _ = _filesystem(target)
        self.dag_id, self.run_id, self.group_id, self.wanted = dag_id, run_id, group_id, set(wanted)
        self.prefix = target.run_prefix(dag_id, run_id, group_id)
        workers = max(1, int(cosmos_setting("upload_concurrency", "32") or 32))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cosmos-async-upload")
        # Bounds the bytes held by queued uploads: dbt's thread waits here when the storage falls behind.
        self._slots = threading.BoundedSemaphore(workers * 4)
        self._lock = threading.Lock()
        self._sent: dict[str, tuple[str, Future[None]]] = {}  # relative path -> (sha256, upload)
        self._failure: tuple[str, BaseException] | None = None
        self.early = 0  # files queued while the capture was still running

    def __enter__(self) -> RunUpload:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def node_captured(self, unique_id: str, node: NodeCapture) -> None:
        """Queue a node's files as soon as dbt finished it (never raises: it runs inside dbt's callback)."""
        if unique_id not in self.wanted:
            return
        try:
            _, files = node_files(unique_id, node)
        except Exception:  # finish() builds the node again and reports what is wrong with it
            return
        with self._lock:
            self.early += len(files)
        for rel, (data, digest) in files.items():
            self._put(rel, data, digest)

    def finish(self, capture: Capture, target_settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Upload what the final capture holds and is not up yet, wait for every file, then write the index."""
        missing = NodeCapture(fallback="dbt did not run this node during capture (disabled or not selected)")
        nodes = [(uid, capture.nodes.get(uid, missing)) for uid in sorted(self.wanted)]
        nodes += [(HOOK_IDS["on-run-start"], capture.on_run_start), (HOOK_IDS["on-run-end"], capture.on_run_end)]
        entries: dict[str, dict[str, Any]] = {}
        for key, node in nodes:
            entries[key], files = node_files(key, node)
            for rel, (data, digest) in files.items():
                self._put(rel, data, digest)
        uploads = sorted((rel, upload) for rel, (_, upload) in self._sent.items())
        wait([upload for _, upload in uploads])
        for rel, upload in uploads:  # also here: wait() may return before a done callback has run
            if not upload.cancelled() and (exc := upload.exception()) is not None:
                self._failed(rel, exc)
        if self._failure is not None:
            rel, exc = self._failure
            raise RemoteStorageError(f"cannot write the run's SQL under {self.prefix}: {rel} failed with "
                                     f"{type(exc).__name__}: {exc}. {_WRITE_HINT}") from exc
        version = STEPS_INDEX_VERSION if any("steps" in e for e in entries.values()) else INDEX_VERSION
        index = {"version": version, "dag_id": self.dag_id, "run_id": self.run_id, "created_at": time.time(),
                 "nodes": entries}
        if self.group_id is not None:  # absent for a DbtDag, so triggerers of earlier versions still read it
            index["group_id"] = self.group_id
        if target_settings:  # a profiles.yml target's public fields (never a credential), for the triggers
            index["dbt_target"] = dict(target_settings)
        path = index_path(self.prefix)
        try:
            self.fs.pipe_file(_strip_scheme(self.fs, path), json.dumps(index, indent=1).encode())
        except Exception as exc:
            raise RemoteStorageError(f"cannot write the run's index {path}: {type(exc).__name__}: {exc}. "
                                     f"{_WRITE_HINT}") from exc
        return index

    def _put(self, rel: str, data: bytes, digest: str) -> None:
        with self._lock:
            sent = self._sent.get(rel)
            if self._failure is not None or (sent is not None and sent[0] == digest):
                return  # already failed (finish reports it), or these very bytes are up or on their way
        if sent is not None:
            # Changed since it was queued: the new bytes must land after the old ones, never before.
            sent[1].exception()
        self._slots.acquire()
        try:
            upload = self._pool.submit(self.fs.pipe_file, _strip_scheme(self.fs, f"{self.prefix}/{rel}"), data)
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._sent[rel] = (digest, upload)
        upload.add_done_callback(lambda done: self._done(rel, done))

    def _done(self, rel: str, upload: Future[None]) -> None:
        self._slots.release()
        if not upload.cancelled() and (exc := upload.exception()) is not None:
            self._failed(rel, exc)  # stops queuing more: the setup fails anyway

    def _failed(self, rel: str, exc: BaseException) -> None:
        with self._lock:
            first = self._failure is None
            self._failure = self._failure or (rel, exc)
            pending = [upload for _, upload in self._sent.values()] if first else []
        for upload in pending:  # the setup fails anyway: queued files need not wait for their retries
            upload.cancel()


def node_files(key: str, node: NodeCapture, directory: str | None = None
               ) -> tuple[dict[str, Any], dict[str, tuple[bytes, str]]]:
    """A node's index entry and its files (path relative to the run prefix -> (bytes, sha256)); see
    :func:`upload_capture`. ``directory``: below which directory of the run prefix the files go (None: its top)."""
    files: dict[str, tuple[bytes, str]] = {}

    def put(rel: str, data: bytes) -> dict[str, Any]:
        rel = f"{directory}/{rel}" if directory else rel
        digest = hashlib.sha256(data).hexdigest()
        files[rel] = (data, digest)
        return {"path": rel, "sha256": digest, "bytes": len(data)}

    entry: dict[str, Any] = {"statements": len(node.statements), "location": node.location,
                             "fallback": node.fallback}
    if node.after_parents:
        entry["after_parents"] = True
    plan = node.steps()
    if node.fallback:  # it runs through dbt: its data need not be uploaded
        return {**put(node_relpath(key), node.script().encode()), **entry}, files
    if len(plan) == 1 and isinstance(plan[0], ScriptCapture):  # one script: the entry is that script
        return {**put(node_relpath(key), plan[0].script().encode()), **entry,
                **_configuration(plan[0].configuration)}, files
    steps = []
    for i, step in enumerate(plan):
        if isinstance(step, LoadCapture):
            steps.append({"kind": "load", "configuration": step.configuration,
                          **put(step_relpath(key, i, "csv"), step.data)})
        else:
            steps.append({"kind": "query", "statements": len(step.statements),
                          **put(step_relpath(key, i, "sql"), step.script().encode()),
                          **_configuration(step.configuration)})
    # "bytes" totals the steps: readers that sum entry sizes (the setup task's log) keep working.
    return {**entry, "bytes": sum(s["bytes"] for s in steps), "steps": steps}, files


def upload_recompiled(target: RemoteTarget, ids: Mapping[str, Any], nodes: Mapping[str, NodeCapture],
                      try_number: int, group_id: str | None = None) -> str:
    """Upload one task try's nodes, compiled again on a worker after their parents ran, and their own index
    (beside the setup's, which stays as it was: an Airflow retry starts from it again); return that index's path
    relative to the run prefix, for the trigger. ``ids``: dag_id, run_id, task_id, map_index."""
    fs, _ = _filesystem(target)
    dag_id, run_id = ids["dag_id"], ids["run_id"]
    prefix = target.run_prefix(dag_id, run_id, group_id)
    where = recompiled_dir(ids["task_id"], int(ids.get("map_index", -1)), try_number)
    setup_index = read_index(target, dag_id, run_id, group_id)
    entries: dict[str, dict[str, Any]] = {}
    files: dict[str, bytes] = {}
    for unique_id, node in nodes.items():
        entries[unique_id], node_data = node_files(unique_id, node, where)
        files.update({rel: data for rel, (data, _) in node_data.items()})
    index = {"version": STEPS_INDEX_VERSION, "dag_id": dag_id, "run_id": run_id, "created_at": time.time(),
             "nodes": entries, **{k: setup_index[k] for k in ("group_id", "dbt_target") if k in setup_index}}
    files[f"{where}/{INDEX_NAME}"] = json.dumps(index, indent=1).encode()  # last: the files it names are up
    for rel, data in files.items():
        try:
            fs.pipe_file(_strip_scheme(fs, f"{prefix}/{rel}"), data)
        except Exception as exc:
            raise RemoteStorageError(f"cannot write {prefix}/{rel}: {type(exc).__name__}: {exc}. {_WRITE_HINT}") \
                from exc
    return f"{where}/{INDEX_NAME}"


def _configuration(configuration: Mapping[str, Any]) -> dict[str, Any]:
    """The ``configuration`` key of a script's entry: the job configuration dbt sent (absent when unknown)."""
    return {"configuration": dict(configuration)} if configuration else {}


def _filesystem(target: RemoteTarget) -> tuple[Any, str]:
    from cosmos_async.impersonation import ImpersonationError

    try:
        return target.filesystem()
    except (ConfigurationError, ImpersonationError):  # their messages name the setting to fix
        raise
    except Exception as exc:
        raise RemoteStorageError(f"cannot open the remote target path {target.url}: {type(exc).__name__}: {exc}") \
            from exc


def delete_run(target: RemoteTarget, dag_id: str, run_id: str, group_id: str | None = None) -> int:
    """Delete this run's (or this task group's) files and nothing else; return how many were removed.

    A DbtDag's run directory may also hold task groups' directories (a DbtTaskGroup inside a DbtDag): its
    teardown deletes only the names a DbtDag writes there.
    """
    fs, _ = _filesystem(target)
    prefix = _strip_scheme(fs, target.run_prefix(dag_id, run_id, group_id))
    root = _strip_scheme(fs, target.url).rstrip("/")
    if not prefix.startswith(root + "/") or prefix.count("/") < root.count("/") + 2:
        raise RemoteStorageError(f"refusing to delete {prefix}: it is not a run prefix under {root}")

    def ours(path: str) -> bool:
        rel = path[len(prefix) + 1:] if path.startswith(prefix + "/") else None
        return rel is not None and (group_id is not None or rel.split("/", 1)[0] in DAG_LEVEL_NAMES)

    try:
        files = [f for f in fs.find(prefix) if ours(f)]
        if files:
            # Delete the listed files rather than a recursive rm: exactly what this run wrote, nothing more.
            fs.rm(files)
        if fs.exists(prefix) and not fs.find(prefix):
            fs.rm(prefix, recursive=True)  # local filesystems keep the emptied directories
    except FileNotFoundError:
        return 0
    except Exception as exc:
        raise RemoteStorageError(f"cannot delete {prefix}: {type(exc).__name__}: {exc}") from exc
    return len(files)


def read_index(target: RemoteTarget, dag_id: str, run_id: str, group_id: str | None = None) -> Mapping[str, Any]:
    """The run's index (used by worker-side fallbacks and tests)."""
    fs, _ = _filesystem(target)
    path = _strip_scheme(fs, index_path(target.run_prefix(dag_id, run_id, group_id)))
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        raise RemoteStorageError(f"no index at {path}: the setup task has not run for this DAG run (clear the "
                                 "task together with its setup task).") from None
