"""The trigger that runs a task's captured dbt node scripts as BigQuery jobs and awaits them in the triggerer.

A node is one script (a query job), or, for a seed, steps in dbt's order: scripts and load jobs whose CSV is
uploaded with the jobs.insert request (:mod:`cosmos_async_triggers.load`). Every job, query or load, follows the
same lifecycle below.

A source node is a freshness check instead (dbt's query captured at setup, or the table's metadata), repeated
while a configured wait lasts (:meth:`BigQueryNodeTrigger._check_source`).

Job ids are deterministic per (DAG, task, run, map index, node, step, attempt), so a trigger that restarts (triggerer
restart, redistribution) finds the job its predecessor submitted instead of running the SQL a second time:

* attempt N answers 404 → submit attempt N (a 409 "duplicate" from a racing insert attaches to that job);
* attempt N is PENDING/RUNNING → wait for it;
* attempt N is DONE without error → the node already succeeded, nothing is re-run;
* attempt N is DONE with an error, or was created before this run's index (an earlier setup of the same
  run, i.e. the DAG run was cleared) → look at attempt N+1.

A job that fails for a transient reason (:mod:`cosmos_async_triggers.bq_errors`) is run again as attempt N+1,
as the profile's ``job_retries`` and ``job_retry_deadline_seconds`` allow (:mod:`cosmos_async_triggers.job_retry`);
the count restarts with each trigger (a triggerer restart, an Airflow retry), bounded by ``MAX_ATTEMPTS``. Each
job carries the configuration dbt-bigquery gave its statements (:mod:`cosmos_async_triggers.job_config`).

The BigQuery job is cancelled when the user stops the task or its ``execution_timeout`` passes, never on a
triggerer restart. Airflow 3.3 cancels a trigger's asyncio task on triggerer shutdown (no message), on a
timeout (``timeout_after`` has passed; ``on_kill`` is not called) and when the trigger leaves this triggerer's
assignment (cancel message ``__airflow_user_action__``, then ``on_kill``). The last covers user actions (mark
failed/success, clear: the trigger row is deleted) but also a trigger taken over by another triggerer after a
late heartbeat, so ``on_kill`` first asks for the task's state and leaves the job running while the task is
still deferred. A timeout is recognised in :meth:`run` itself, from ``timeout_after``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from airflow.triggers.base import BaseTrigger, TaskSkippedEvent, TaskSuccessEvent, TriggerEvent

from cosmos_async_triggers import bq_errors, freshness, job_config, layout, load, rest
from cosmos_async_triggers import parents as parent_wait
from cosmos_async_triggers.auth import GcpAuthError, GcpSource, get_connection, get_profile_target, get_token
from cosmos_async_triggers.dbt_profile import ProfileTargetError, TargetRef
from cosmos_async_triggers.job_retry import JobRetry, JobRetrySettingError
from cosmos_async_triggers.layout import job_id_base
from cosmos_async_triggers.storage import RemoteReadError, Step, read_index, read_node_steps

# A task's node of this kind is a freshness check: its captured script is the query dbt sends for it.
SOURCE_KIND = "source"

CLASSPATH = "cosmos_async_triggers.bigquery.BigQueryNodeTrigger"
# Same key as cosmos_async.operators.links.JOB_LINK_KEY (not imported: this package must stay light).
JOB_LINK_KEY = "bigquery_job_link"
MAX_ATTEMPTS = 100
# How long one getQueryResults call may wait for a query job to complete (BigQuery's default is 10 s).
LONG_POLL_MS = 10_000
# BigQuery's limit on the length of a query's text ("maximum unresolved GoogleSQL query length").
MAX_QUERY_CHARS = 1024 * 1024
_CANCEL_RETRY = rest.RetryPolicy(attempts=3, max_total_sleep_s=5.0)
_LABEL_UNSAFE = re.compile(r"[^a-z0-9_-]")


class NodeRunError(Exception):
    """The node cannot be run as configured (missing index entry, no project, …); the message says why."""


@dataclass
class _JobRef:
    project: str
    job_id: str
    location: str | None


@dataclass
class _Prepared:
    """A task's nodes, read and checked, ready to run as jobs."""

    gcp: GcpSource
    entries: list[dict[str, Any]]
    plans: list[list[Step]]
    project: str
    stem: str
    base_labels: dict[str, str]
    created_after_ms: float
    retry: JobRetry


def bq_label(value: str) -> str:
    """A BigQuery label value: lowercase, [a-z0-9_-], at most 63 characters."""
    return _LABEL_UNSAFE.sub("_", str(value).lower())[:63]


def bq_label_key(value: str) -> str:
    """A BigQuery label key: like a value, but non-empty and starting with a letter."""
    key = bq_label(value)
    return key if key[:1].isalpha() else f"l_{key}"[:63]


class BigQueryNodeTrigger(BaseTrigger):
    """Submit (or reattach to) one BigQuery job per node and report the outcome as a dbt run would.

    BigQuery credentials come from ``gcp_conn_id`` or, when it is None, from ``dbt_target`` (a
    :class:`~cosmos_async_triggers.dbt_profile.TargetRef` as kwargs: profiles.yml path, profile, target), read
    here. The kwargs hold references only: Airflow stores them in its database.
    """

    def __init__(self, *, nodes: list[dict[str, Any]], gcp_conn_id: str | None, storage_conn_id: str | None,
                 remote_target_path: str, project: str | None, location: str | None, poll_interval: float = 2.0,
                 labels: dict[str, str] | None = None, end_task: bool = False,
                 run: dict[str, Any] | None = None, group_id: str | None = None,
                 dbt_target: dict[str, str] | None = None,
                 parents: list[str] | None = None, parent_check_interval: float = 1.0,
                 max_jobs: int | None = None, execution_timeout_s: float | None = None,
                 index_relpath: str | None = None) -> None:
        """``parents``: task ids of this run that must succeed before any job is submitted (waited for here);
        ``max_jobs``: at most this many tasks of the run hold BigQuery jobs at once in this triggerer process;
        ``execution_timeout_s``: the task's execution_timeout, counted from the moment its parents are done;
        ``index_relpath``: read the nodes from this index of the run (the task's nodes compiled again on a worker
        after their parents ran) instead of the setup's."""
        super().__init__()
        if (gcp_conn_id is None) == (dbt_target is None):
            raise ValueError("BigQueryNodeTrigger needs exactly one of gcp_conn_id and dbt_target")
        self.nodes = [dict(n) for n in nodes]
        self.gcp_conn_id = gcp_conn_id
        self.dbt_target = TargetRef.from_kwargs(dbt_target) if dbt_target else None
        self.storage_conn_id = storage_conn_id
        self.remote_target_path = remote_target_path
        self.project = project
        self.location = location
        self.poll_interval = float(poll_interval)
        self.labels = dict(labels or {})
        self.end_task = bool(end_task)
        self.run_info = dict(run) if run else None
        self.group_id = group_id  # the DbtTaskGroup whose setup uploaded this run's files (None for a DbtDag)
        self.parents = sorted(parents or [])
        self.parent_check_interval = float(parent_check_interval)
        self.max_jobs = int(max_jobs) if max_jobs else None
        self.execution_timeout_s = float(execution_timeout_s) if execution_timeout_s else None
        self.index_relpath = index_relpath
        self._gcp: GcpSource | None = None
        self._active: _JobRef | None = None  # the job on_kill must cancel
        self._ids: dict[str, Any] | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return CLASSPATH, {
            "nodes": self.nodes, "gcp_conn_id": self.gcp_conn_id, "storage_conn_id": self.storage_conn_id,
            "remote_target_path": self.remote_target_path, "project": self.project, "location": self.location,
            "poll_interval": self.poll_interval, "labels": self.labels, "end_task": self.end_task,
            "run": self.run_info, "group_id": self.group_id,
            "dbt_target": self.dbt_target.to_kwargs() if self.dbt_target else None, "parents": self.parents,
            "parent_check_interval": self.parent_check_interval, "max_jobs": self.max_jobs,
            "execution_timeout_s": self.execution_timeout_s, "index_relpath": self.index_relpath,
        }

    # ---- events -------------------------------------------------------------------------------------------

    async def run(self) -> AsyncIterator[TriggerEvent]:
        payload = await self._outcome()
        for warning in payload.get("warnings", []):
            self.log.warning("%s", warning)
        status = payload["status"]
        final = {"success": parent_wait.SUCCESS, "upstream_failed": parent_wait.FAILED,
                 "skipped": parent_wait.SKIPPED}
        if status in final and self._ids is not None:
            # Children of this task waiting in this process go on (or give up) now, not at the next state check.
            parent_wait.publish(self._ids["dag_id"], self._ids["run_id"], self._ids["task_id"], final[status])
        if status == "success" and self.end_task:
            xcoms: dict[str, Any] = {"return_value": payload["jobs"]}
            links = [j["link"] for j in payload["jobs"] if j.get("link")]
            if links:
                xcoms[JOB_LINK_KEY] = links[-1]
            yield TaskSuccessEvent(xcoms=xcoms)
        elif status == "skipped" and self.end_task:
            self.log.info("%s", payload["message"])
            yield TaskSkippedEvent()
        else:
            yield TriggerEvent(payload)

    async def _outcome(self) -> dict[str, Any]:
        """Wait for the parents, then run the nodes: the event payload (status, message, jobs, warnings)."""
        jobs: list[dict[str, Any]] = []
        warnings: list[str] = []
        try:
            ids = self._ids = self._run_ids()
            verdict = await parent_wait.wait_for_parents(ids["dag_id"], ids["run_id"], self.parents,
                                                     interval=self.parent_check_interval)
            if verdict.outcome == parent_wait.FAILED:
                return {"status": "upstream_failed", "message": f"not run: {verdict.reason}", "jobs": jobs}
            if verdict.outcome == parent_wait.SKIPPED:
                return {"status": "skipped", "message": f"skipped: {verdict.reason}", "jobs": jobs}
            prepared = await self._prepare()
            if isinstance(prepared, dict):
                return prepared  # the LOCAL fallback
            # Reading the index and scripts happened above, outside the cap: a slot is held only by running jobs.
            async with parent_wait.job_slot((ids["dag_id"], ids["run_id"], self.group_id or ""), self.max_jobs):
                if self.execution_timeout_s is None:
                    return await self._run_jobs(prepared, jobs, warnings)
                try:
                    return await asyncio.wait_for(self._run_jobs(prepared, jobs, warnings), self.execution_timeout_s)
                except asyncio.TimeoutError:
                    await self._cancel_active()
                    return {"status": "timeout", "jobs": jobs, "warnings": warnings,
                            "message": f"execution_timeout of {self.execution_timeout_s:g} s passed while the "
                                       "task's BigQuery job(s) ran; the job in flight was cancelled"}
        except asyncio.CancelledError:
            if self._timed_out():
                self.log.info("the task's execution_timeout passed while its BigQuery job ran")
                await self._cancel_active()
            raise
        except rest.BigQueryApiError as exc:
            return {"status": "failed", "message": bq_errors.explain(exc.reason, str(exc)), "jobs": jobs,
                    "warnings": warnings}
        except (NodeRunError, RemoteReadError, GcpAuthError, ProfileTargetError, JobRetrySettingError) as exc:
            return {"status": "failed", "message": str(exc), "jobs": jobs, "warnings": warnings}
        except Exception as exc:  # an event with the cause beats a trigger crash with a traceback only
            self.log.exception("BigQuery trigger failed unexpectedly")
            return {"status": "failed", "message": f"{type(exc).__name__}: {exc}", "jobs": jobs,
                    "warnings": warnings}

    async def on_kill(self) -> None:
        """The user stopped the task: cancel the job in flight (Airflow does not call this on restarts)."""
        if self._active is None or self._gcp is None:
            return
        if await self._task_still_deferred():
            # Airflow 3.3 also calls on_kill for a trigger that merely left this triggerer (its heartbeat was
            # late and another triggerer took it over): the task waits on, and the new trigger reattaches.
            self.log.info("task is still deferred: BigQuery job %s moved with its trigger, not cancelling",
                          self._active.job_id)
            return
        await self._cancel_active()

    async def cancel_running_job(self) -> None:
        """Cancel the job in flight now, without asking the task's state: for a worker that awaits the trigger
        itself (``await_on_worker``) and was stopped or timed out by Airflow."""
        await self._cancel_active()

    def _timed_out(self) -> bool:
        """True once the deadline the triggerer set on this trigger (the task's execution_timeout) has passed."""
        deadline = getattr(self, "timeout_after", None)
        if deadline is None:
            return False
        if deadline.tzinfo is None:
            deadline = deadline.replace(tzinfo=timezone.utc)
        return deadline <= datetime.now(timezone.utc)

    async def _cancel_active(self) -> None:
        ref, self._active = self._active, None  # at most one cancel, whichever path comes first
        if ref is None or self._gcp is None:
            return
        try:
            await rest.request_json("POST", f"{self._jobs_url(ref.project)}/{ref.job_id}/cancel",
                                    token=await get_token(self._gcp), params=_loc(ref.location),
                                    retry=_CANCEL_RETRY)
            self.log.info("cancelled BigQuery job %s", ref.job_id)
        except rest.BigQueryApiError as exc:
            if exc.status != 404:  # 404: the insert never reached BigQuery, nothing to cancel
                self.log.warning("could not cancel BigQuery job %s: %s", ref.job_id, exc)

    async def _task_still_deferred(self) -> bool:
        """Ask the triggerer's supervisor for this task's state; False when unknown (then cancel, as documented)."""
        try:
            from airflow.sdk.execution_time import task_runner
            from airflow.sdk.execution_time.comms import GetTaskStates

            comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
            if comms is None or not hasattr(comms, "asend"):
                return False
            ids = self._run_ids()
            map_index = -1 if ids.get("map_index") is None else int(ids["map_index"])
            msg = GetTaskStates(dag_id=ids["dag_id"], task_ids=[ids["task_id"]], run_ids=[ids["run_id"]],
                                map_index=map_index)
            result = await asyncio.wait_for(comms.asend(msg), timeout=5)
            key = ids["task_id"] if map_index < 0 else f"{ids['task_id']}_{map_index}"
            state = (result.task_states.get(ids["run_id"]) or {}).get(key)
            return str(getattr(state, "value", state)) == "deferred"
        except Exception:
            return False

    # ---- the nodes ----------------------------------------------------------------------------------------

    def _run_ids(self) -> dict[str, Any]:
        if self.run_info:
            return self.run_info
        ti = self.task_instance
        if ti is None:
            raise NodeRunError("the trigger has neither 'run' ids nor a task instance (Airflow sets one on "
                               "triggers it runs); pass run={'dag_id', 'run_id', 'task_id', 'map_index'}")
        return {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id,
                "map_index": getattr(ti, "map_index", -1)}

    async def _prepare(self) -> _Prepared | dict[str, Any]:
        """Everything before the first job: credentials, the run's index, every script checked; or the fallback
        event's payload when a node must run through dbt on a worker."""
        ids = self._run_ids()
        dag_id, run_id, task_id = ids["dag_id"], ids["run_id"], ids["task_id"]
        map_index = -1 if ids.get("map_index") is None else int(ids["map_index"])
        # A profile target is read after the index: the index carries its public fields as setup rendered them.
        gcp: GcpSource | None = None
        if self.dbt_target is None:
            gcp = self._gcp = await get_connection(self.gcp_conn_id)  # type: ignore[arg-type]
        storage_conn: GcpSource | None = gcp
        if self.remote_target_path.startswith(("gs://", "gcs://")):
            if self.storage_conn_id not in (None, self.gcp_conn_id):
                storage_conn = await get_connection(self.storage_conn_id)  # type: ignore[arg-type]
            elif storage_conn is None:
                raise NodeRunError(f"{self.remote_target_path}: a gs:// remote target path needs a "
                                   "google_cloud_platform connection for the bucket, also with a profiles.yml: set "
                                   "AIRFLOW__COSMOS__REMOTE_TARGET_PATH_CONN_ID (or operator_args"
                                   "['remote_target_path_conn_id'])")

        async def storage_token() -> str | None:
            return await get_token(storage_conn) if storage_conn is not None else None

        prefix, index = await read_index(self.remote_target_path, dag_id, run_id, conn=storage_conn,
                                         token_for=storage_token, group_id=self.group_id,
                                         relpath=self.index_relpath)
        if gcp is None:
            assert self.dbt_target is not None
            gcp = self._gcp = await get_profile_target(self.dbt_target, index.get("dbt_target"))
        entries = []
        for node in self.nodes:
            entry = index["nodes"].get(node["id"])
            if entry is None:
                raise NodeRunError(f"the run's index has no entry for {node['id']}: the setup task captured "
                                   "another selection of nodes; re-run the setup task with this task.")
            entries.append(entry)
        # Decide on a LOCAL fallback before submitting anything, so no node runs twice.
        fallbacks = [(node, entry) for node, entry in zip(self.nodes, entries, strict=True) if entry.get("fallback")]
        if fallbacks:
            node, entry = fallbacks[0]
            # after_parents: each such node only read what its parents build, so compiling it again now that they
            # ran gives SQL to run here; otherwise it runs through dbt.
            return {"status": "fallback", "reason": f"{node['id']}: {entry['fallback']}",
                    "after_parents": all(e.get("after_parents") for _, e in fallbacks)}
        # Verify every script and data file first: a tampered or missing file must not leave half the task submitted.
        plans = [await read_node_steps(prefix, node["id"], entry, conn=storage_conn, token_for=storage_token)
                 for node, entry in zip(self.nodes, entries, strict=True)]
        for node, steps in zip(self.nodes, plans, strict=True):
            longest = max((len(s.sql) for s in steps if s.kind == "query"), default=0)
            if longest > MAX_QUERY_CHARS:  # BigQuery would reject it; refuse before any step has run
                raise NodeRunError(f"{node['id']}: its SQL has {longest} characters, more than the "
                                   f"{MAX_QUERY_CHARS} BigQuery accepts in one query; split it into smaller "
                                   "table or view models (ephemeral ones are inlined and do not help)")
            size = max((len(s.data) for s in steps if s.kind == "load"), default=0)
            if size > layout.MAX_MULTIPART_BYTES:  # refuse before any step (e.g. the seed's DROP) has run
                raise NodeRunError(f"{node['id']}: its load data has {size} bytes, more than the "
                                   f"{layout.MAX_MULTIPART_BYTES} a trigger uploads")
        project = self.project or gcp.project
        if not project:
            where = (f"the 'project' extra of connection {self.gcp_conn_id!r}" if self.dbt_target is None
                     else f"project (or execution_project) in {gcp.source}")
            raise NodeRunError(f"no BigQuery project: set the operator's 'project' or {where}")
        created_after_ms = float(index.get("created_at") or 0) * 1000
        retry = JobRetry.from_settings(index.get("dbt_target") or {})
        stem = job_id_base(dag_id, task_id, run_id, map_index)
        base_labels = {bq_label_key(k): bq_label(v) for k, v in self.labels.items()}
        base_labels.update(airflow_dag=bq_label(dag_id), airflow_task=bq_label(task_id),
                           airflow_run=bq_label(run_id))
        return _Prepared(gcp, entries, plans, project, stem, base_labels, created_after_ms, retry)

    async def _run_jobs(self, prepared: _Prepared, jobs: list[dict[str, Any]],
                        warnings: list[str]) -> dict[str, Any]:
        """Run the nodes' steps in order; the event payload (status, message, jobs, warnings)."""
        p = prepared
        project, stem, created_after_ms, retry = p.project, p.stem, p.created_after_ms, p.retry
        for i, (node, entry, steps) in enumerate(zip(self.nodes, p.entries, p.plans, strict=True)):
            location = entry.get("location") or self.location or p.gcp.location
            labels = {**p.base_labels, "dbt_node": bq_label(node["id"])}
            if node.get("kind") == SOURCE_KIND:
                failure = await self._check_source(node, steps, project, location, f"{stem}_{i}", labels, jobs,
                                                   warnings)
                if failure:
                    return {"status": "failed", "message": failure, "jobs": jobs, "warnings": warnings}
                continue
            job: dict[str, Any] | None = None
            session: str | None = None  # the BigQuery session a step of this node created (createSession)
            for j, step in enumerate(steps):
                if step.kind == "query" and not step.sql.strip():
                    continue  # e.g. no on-run-end hooks: nothing to run
                # A one-script node keeps the job ids it always had; steps get their own.
                job_stem = f"{stem}_{i}" if "steps" not in entry else f"{stem}_{i}_s{j}"
                step = dataclasses.replace(step, configuration=job_config.in_session(step.configuration, session))
                job = await self._run_step(project, location, job_stem, step, labels, created_after_ms, retry)
                session = job_config.session_of(job) or session
                jobs.append(_summary(job, location))
                error = job.get("status", {}).get("errorResult")
                if error:
                    return {"status": "failed", "message": _error_message(node, job, error), "jobs": jobs,
                            "warnings": warnings}
            if node.get("kind") == "test" and job is not None:
                failure = await self._judge_test(node, job, location, warnings)
                if failure:
                    return {"status": "failed", "message": failure, "jobs": jobs, "warnings": warnings}
        return {"status": "success", "message": f"{len(jobs)} BigQuery job(s) succeeded", "jobs": jobs,
                "warnings": warnings}

    # ---- sources ------------------------------------------------------------------------------------------

    async def _check_source(self, node: dict[str, Any], steps: list[Step], project: str, location: str | None,
                            stem: str, labels: dict[str, str], jobs: list[dict[str, Any]],
                            warnings: list[str]) -> str | None:
        """dbt's freshness check, repeated every ``wait.interval_s`` while the source is not fresh and the wait
        lasts; a message when it ends past error_after. Sleeping here holds no worker slot (the trigger waits).

        The wait is counted from this trigger's start: a triggerer restart starts it again, and the task's
        execution_timeout (the trigger's timeout) stays the last word."""
        sql = next((s.sql for s in steps if s.kind == "query" and s.sql.strip()), "")
        if node.get("loaded_at_field") and not sql:
            raise NodeRunError(f"{node['id']}: the setup task recorded no freshness query for it (loaded_at_field "
                               f"{node['loaded_at_field']!r}); re-run the setup task with this task.")
        wait = node.get("wait") or {}
        deadline = time.monotonic() + float(wait.get("timeout_s") or 0)
        checks = 0
        while True:
            checks += 1
            verdict = await self._freshness(node, sql, project, location, stem, labels, jobs)
            interval = float(wait.get("interval_s") or 0)
            if verdict.status == "pass" or not wait or time.monotonic() + interval > deadline:
                break
            self.log.info("%s; checking again in %.0f s (wait ends in %.0f s)", verdict.message, interval,
                          deadline - time.monotonic())
            await asyncio.sleep(interval)
        after = f" (after {checks} checks)" if checks > 1 else ""
        if verdict.status == "error":
            return verdict.message + after
        if verdict.status == "warn":
            warnings.append(verdict.message + after)
        else:
            self.log.info("%s%s", verdict.message, after)
        return None

    async def _freshness(self, node: dict[str, Any], sql: str, project: str, location: str | None, stem: str,
                         labels: dict[str, str], jobs: list[dict[str, Any]]) -> freshness.Verdict:
        if not sql:  # no loaded_at_field: dbt-bigquery reads the table's lastModifiedTime (tables.get)
            relation = node.get("relation") or {}
            assert self._gcp is not None
            url = (f"{self._gcp.bigquery_endpoint}/bigquery/v2/projects/{relation.get('project') or project}"
                   f"/datasets/{relation.get('dataset')}/tables/{relation.get('table')}")
            table = await rest.request_json("GET", url, token=await self._token())
            modified = datetime.fromtimestamp(int(table["lastModifiedTime"]) / 1000, tz=timezone.utc)
            return freshness.judge(node, modified, datetime.now(timezone.utc))
        # A read-only query: each check is a new job (re-running it after a restart is harmless).
        job = await self._run_job(project, location, f"{stem}_f{int(time.time() * 1000)}", Step("query", sql=sql),
                                  labels, 0.0)
        jobs.append(_summary(job, location))
        error = job.get("status", {}).get("errorResult")
        if error:
            raise NodeRunError(_error_message(node, job, error))
        ref = job["jobReference"]
        url = self._results_url(ref["projectId"], ref["jobId"])
        result = await rest.request_json("GET", url, token=await self._token(),
                                         params={**_loc(location or ref.get("location")), "maxResults": 2,
                                                 "formatOptions.useInt64Timestamp": "true"})
        try:
            loaded, snapshotted = freshness.freshness_row(result)
        except ValueError as exc:
            raise NodeRunError(f"{node['id']}: {exc}") from None
        return freshness.judge(node, loaded, snapshotted)

    # ---- one job --------------------------------------------------------------------------------------------

    def _jobs_url(self, project: str) -> str:
        assert self._gcp is not None
        return f"{self._gcp.bigquery_endpoint}/bigquery/v2/projects/{project}/jobs"

    def _results_url(self, project: str, job_id: str) -> str:
        """jobs.getQueryResults of a job."""
        assert self._gcp is not None
        return f"{self._gcp.bigquery_endpoint}/bigquery/v2/projects/{project}/queries/{job_id}"

    async def _token(self) -> str | None:
        assert self._gcp is not None
        return await get_token(self._gcp)

    async def _get_job(self, ref: _JobRef) -> dict[str, Any] | None:
        try:
            return await rest.request_json("GET", f"{self._jobs_url(ref.project)}/{ref.job_id}",
                                           token=await self._token(), params=_loc(ref.location))
        except rest.BigQueryApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def _run_step(self, project: str, location: str | None, stem: str, step: Step, labels: dict[str, str],
                        created_after_ms: float, retry: JobRetry) -> dict[str, Any]:
        """:meth:`_run_job`, run again as a new job after a transient failure, as the profile's job_retries allow."""
        started = time.monotonic()
        job = await self._run_job(project, location, stem, step, labels, created_after_ms)
        number = 0
        while True:
            error = job.get("status", {}).get("errorResult") or {}
            if not error or not bq_errors.job_retryable(error.get("reason")):
                return job
            number += 1
            delay = retry.delay(number, time.monotonic() - started)
            if delay is None:
                deadline = f", job_retry_deadline_seconds {retry.deadline_s:g}" if retry.deadline_s else ""
                self.log.info("BigQuery job %s failed with %s; not retried (job_retries %d%s)",
                              job["jobReference"]["jobId"], error.get("reason"), retry.retries, deadline)
                return job
            self.log.warning("BigQuery job %s failed with %s, which is transient (%s); retry %d of %d as a new job "
                             "in %.1fs", job["jobReference"]["jobId"], error.get("reason"),
                             error.get("message", ""), number, retry.retries, delay)
            await asyncio.sleep(delay)
            job = await self._run_job(project, location, stem, step, labels, created_after_ms)

    async def _run_job(self, project: str, location: str | None, stem: str, step: Step, labels: dict[str, str],
                       created_after_ms: float) -> dict[str, Any]:
        """Find or submit this node's job (see the module docstring) and wait until it is DONE."""
        for attempt in range(MAX_ATTEMPTS):
            ref = _JobRef(project, f"{stem}_{attempt}", location)
            job = await self._get_job(ref)
            if job is None:
                self._active = ref  # set before the insert: a kill during the request still cancels it
                job = await self._insert(ref, step, labels)
                returned = job.get("jobReference", {}).get("jobId")
                if returned and returned != ref.job_id:
                    # BigQuery keeps the id we send; the BigQuery emulator names upload jobs itself. Follow the
                    # job we got (a restarted trigger cannot find it by its deterministic id and re-runs the step).
                    self.log.warning("BigQuery named job %s %s; following that job", ref.job_id, returned)
                    ref = self._active = _JobRef(project, returned, location or job["jobReference"].get("location"))
                return await self._wait(ref, job)
            stale = _created_ms(job) < created_after_ms
            if _state(job) != "DONE":
                self.log.info("reattaching to BigQuery job %s (%s)", ref.job_id, _state(job))
                self._active = ref
                job = await self._wait(ref, job)
                if not stale:
                    return job
            elif not stale and not job.get("status", {}).get("errorResult"):
                self.log.info("BigQuery job %s already succeeded; not running the SQL again", ref.job_id)
                return job
            # A failed attempt, or one from an earlier setup of this run: the next attempt number is ours.
        raise NodeRunError(f"{MAX_ATTEMPTS} attempts of {stem}_N exist already; clear the DAG run to start over")

    async def _insert(self, ref: _JobRef, step: Step, labels: dict[str, str]) -> dict[str, Any]:
        job_ref: dict[str, Any] = {"projectId": ref.project, "jobId": ref.job_id}
        if ref.location:
            job_ref["location"] = ref.location
        try:
            if step.kind == "load":
                # The configuration dbt-bigquery sent (destination, schema, CSV options), with our labels added.
                config, dropped = job_config.labelled(step.configuration, labels)
                self._warn_dropped(ref, dropped)
                assert self._gcp is not None
                job = await load.insert_with_data(load.upload_url(self._gcp.bigquery_endpoint, ref.project),
                                                  {"jobReference": job_ref, "configuration": config}, step.data,
                                                  token=await self._token())
            else:
                config, dropped = job_config.query_configuration(step.configuration, step.sql, labels)
                self._warn_dropped(ref, dropped)
                body = {"jobReference": job_ref, "configuration": config}
                job = await rest.request_json("POST", self._jobs_url(ref.project), token=await self._token(),
                                              json=body)
            self.log.info("submitted BigQuery %s job %s", step.kind, ref.job_id)
            return job
        except rest.BigQueryApiError as exc:
            if exc.status != 409:
                raise
        # Duplicate: an earlier request of ours (retried after a lost answer) or a twin trigger created it.
        self.log.info("BigQuery job %s exists already; attaching to it", ref.job_id)
        job = await self._get_job(ref)
        if job is None:
            raise NodeRunError(f"BigQuery answered 409 for job {ref.job_id} but jobs.get cannot find it")
        return job

    def _warn_dropped(self, ref: _JobRef, dropped: list[str]) -> None:
        if dropped:
            self.log.warning("BigQuery job %s: dbt's labels %s left out, to stay within BigQuery's %d labels per job",
                             ref.job_id, ", ".join(dropped), job_config.MAX_LABELS)

    async def _wait(self, ref: _JobRef, job: dict[str, Any]) -> dict[str, Any]:
        """Until the job is DONE: a query job by long-polling getQueryResults (BigQuery answers as the job ends,
        so the next node starts without a poll interval's delay), a load job by polling jobs.get."""
        interval = max(self.poll_interval, 0.01)
        ceiling = max(interval, min(interval * 4, 30.0))
        query = "query" in job.get("configuration", {})
        while _state(job) != "DONE":
            if query:
                await self._await_query(ref)
            else:
                await asyncio.sleep(interval)
                interval = min(interval * 1.25, ceiling)  # mild backoff: long jobs need fewer polls
            polled = await self._get_job(ref)
            if polled is None:
                raise NodeRunError(f"BigQuery job {ref.job_id} disappeared while running (404 on jobs.get)")
            job = polled
        self._active = None
        return job

    async def _await_query(self, ref: _JobRef) -> None:
        """Return when BigQuery says the query job completed or after up to LONG_POLL_MS; jobs.get then has the
        job's final status (an error here — e.g. the job failed, which getQueryResults reports as an HTTP error —
        is left for jobs.get to report)."""
        url = self._results_url(ref.project, ref.job_id)
        try:
            await rest.request_json("GET", url, token=await self._token(),
                                    params={**_loc(ref.location), "timeoutMs": LONG_POLL_MS, "maxResults": 0})
        except rest.BigQueryApiError:
            await asyncio.sleep(max(self.poll_interval, 0.01))  # no busy loop while getQueryResults keeps failing

    async def _judge_test(self, node: dict[str, Any], job: dict[str, Any], location: str | None,
                          warnings: list[str]) -> str | None:
        """dbt's verdict from the test query's row (failures, should_warn, should_error); a message if it fails.

        The location the job was submitted in names it; the answer's location only when none was given.
        """
        ref = job["jobReference"]
        url = self._results_url(ref["projectId"], ref["jobId"])
        result = await rest.request_json("GET", url, token=await self._token(),
                                         params={**_loc(location or ref.get("location")), "maxResults": 2})
        names = [f.get("name", "").lower() for f in result.get("schema", {}).get("fields", [])]
        rows = result.get("rows") or []
        name = node.get("name") or node["id"]
        if "failures" not in names or len(rows) != 1:
            return (f"test {name}: the query returned {len(rows)} row(s) with columns {names}; expected one row "
                    "with failures, should_warn, should_error (dbt's test query)")
        row = dict(zip(names, (cell.get("v") for cell in rows[0].get("f", [])), strict=False))
        failures = int(float(row.get("failures") or 0))
        should_warn, should_error = _true(row.get("should_warn")), _true(row.get("should_error"))
        plural = "" if failures == 1 else "s"
        if str(node.get("severity") or "error").lower() == "error" and should_error:
            return f"Failure in test {name} ({node['id']}): got {failures} result{plural}"
        if should_warn:
            warnings.append(f"Warning in test {name} ({node['id']}): got {failures} result{plural}")
        return None


def _loc(location: str | None) -> dict[str, str]:
    return {"location": location} if location else {}


def _true(value: Any) -> bool:
    return str(value).lower() == "true"


def _state(job: dict[str, Any]) -> str:
    return str(job.get("status", {}).get("state") or "PENDING")


def _created_ms(job: dict[str, Any]) -> float:
    try:
        return float(job.get("statistics", {}).get("creationTime") or 0)
    except (TypeError, ValueError):
        return 0.0


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _summary(job: dict[str, Any], location: str | None) -> dict[str, Any]:
    """What the task logs and returns for one job (JSON-able, no SQL)."""
    ref = job.get("jobReference", {})
    stats = job.get("statistics", {})
    query = stats.get("query", {})
    project, job_id = ref.get("projectId", ""), ref.get("jobId", "")
    loc = location or ref.get("location") or "US"
    start, end = _int(stats.get("startTime")), _int(stats.get("endTime"))
    extra = {"output_rows": _int(stats["load"].get("outputRows"))} if isinstance(stats.get("load"), dict) else {}
    return {
        **extra,
        "job_id": job_id,
        "link": f"https://console.cloud.google.com/bigquery?project={project}&j=bq:{loc}:{job_id}&page=queryresults",
        "state": _state(job),
        "duration_s": round((end - start) / 1000, 3) if start and end else None,
        "total_bytes_processed": _int(query.get("totalBytesProcessed")),
        "total_slot_ms": _int(stats.get("totalSlotMs") or query.get("totalSlotMs")),
        "num_dml_affected_rows": _int(query.get("numDmlAffectedRows")),
        "cache_hit": query.get("cacheHit"),
    }


def _error_message(node: dict[str, Any], job: dict[str, Any], error: dict[str, Any]) -> str:
    """BigQuery's own message, with its reason and location, as dbt would print it."""
    details = ", ".join(f"{k}: {error[k]}" for k in ("reason", "location") if error.get(k))
    message = bq_errors.explain(error.get("reason"), error.get("message", "unknown error"))
    return (f"{node.get('kind', 'node')} {node['id']} failed in BigQuery job {job['jobReference']['jobId']}: "
            f"{message}" + (f" ({details})" if details else ""))

