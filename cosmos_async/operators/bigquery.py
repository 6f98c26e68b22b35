"""AIRFLOW_ASYNC per-node task: its captured script runs as a BigQuery job awaited in the triggerer.

By default the task starts in the triggerer (``start_from_trigger``) and a success ends it there, so it never
holds a worker slot. A failure resumes it on a worker just long enough to raise BigQuery's error (so retries and
callbacks behave as for any task); a node the capture marked unsafe resumes on a worker: one whose SQL came from
what its parents build is compiled there again, after them, and defers again with that SQL; any other runs
through dbt (LOCAL). With start-from-trigger off, and under ``airflow dags test`` / ``dag.test()``, ``execute``
defers to the same trigger. With ``await_on_worker`` the task never defers: ``execute`` runs that trigger to its
end on the worker.

With ``wait_for_parents="triggerer"`` the task starts with its DAG run and its trigger waits for the upstream
tasks (see :mod:`cosmos_async_triggers.parents`); ``execute`` judges them itself and reschedules while they run.
Its ``execution_timeout`` then counts from the moment its parents are done, as it does when the scheduler releases
the task: Airflow would count it from the deferral at the run's start, so Airflow is not given it (see
:attr:`DbtBigQueryAsyncOperator.execution_timeout`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.triggers.base import StartTriggerArgs

from cosmos_async.operators.links import JOB_LINK_KEY, BigQueryJobLink

TRIGGER_CLASSPATH = "cosmos_async_triggers.bigquery.BigQueryNodeTrigger"
# The trigger's keyword defaults (tests/unit checks them against its signature): values equal to these are left
# out of the serialized start_trigger_args.
TRIGGER_DEFAULTS: dict[str, Any] = {"poll_interval": 2.0, "labels": None, "end_task": False, "run": None,
                                    "group_id": None, "dbt_target": None, "parents": [],  # [] ≡ its None
                                    "parent_check_interval": 1.0, "max_jobs": None, "execution_timeout_s": None,
                                    "index_relpath": None}
_UNSET = object()
# local_fallback keys Airflow renders as templates (as DbtLocalOperator's select, dbt_vars and env); the rest is
# kept off the serialized DAG.
_TEMPLATED_FALLBACK = ("select", "dbt_vars", "env")
WAIT_MODES = ("triggerer", "scheduler")


class DbtBigQueryAsyncOperator(BaseOperator):
    """Run one dbt node (or one node's tests) as BigQuery job(s) without holding a worker while they run."""

    operator_extra_links = (BigQueryJobLink(),)
    # The LOCAL fallback's env and vars may hold run-time templates (``{{ var.value.x }}``), as in LOCAL.
    template_fields: Sequence[str] = ("local_fallback",)
    ui_color = "#c6e2ff"

    def __init__(self, *, nodes: Sequence[dict[str, Any]], gcp_conn_id: str | None, remote_target_path: str,
                 remote_target_path_conn_id: str | None, location: str | None, project: str | None = None,
                 poll_interval: float = 2.0, start_from_trigger: bool = True,
                 labels: dict[str, str] | None = None, local_fallback: dict[str, Any] | None = None,
                 dbt_group_id: str | None = None, dbt_target: dict[str, str] | None = None,
                 wait_for_parents: str = "scheduler", parent_check_interval: float = 1.0,
                 max_jobs: int | None = None, await_on_worker: bool = False, **kwargs: Any) -> None:
        """``dbt_group_id``: the DbtTaskGroup whose setup uploads this node's SQL (None in a DbtDag). Credentials:
        ``gcp_conn_id``, or when it is None ``dbt_target`` (profiles.yml path, profile, target), which the trigger
        reads in the triggerer; neither holds a secret.

        ``wait_for_parents="triggerer"``: the task starts with its DAG run (trigger rule ``always``) and waits for
        its upstream tasks itself, in the trigger; ``"scheduler"``: Airflow releases it after its upstream tasks.
        ``max_jobs``: at most this many tasks of one DAG run hold BigQuery jobs at once (per triggerer process).
        ``await_on_worker``: the task runs on a worker and awaits its jobs there, never deferring (for short jobs
        that must not queue behind a run's worth of triggers waiting to be created, e.g. on-run-start).
        """
        if wait_for_parents not in WAIT_MODES:
            raise ValueError(f"wait_for_parents={wait_for_parents!r}: use one of {', '.join(WAIT_MODES)}")
        if wait_for_parents == "triggerer":
            kwargs["trigger_rule"] = "always"
        self.wait_for_parents = wait_for_parents  # before BaseOperator sets execution_timeout, which reads it
        super().__init__(**kwargs)
        self.nodes = [dict(n) for n in nodes]
        self.gcp_conn_id = gcp_conn_id
        self.dbt_target = dict(dbt_target) if dbt_target else None
        self.remote_target_path = remote_target_path
        self.remote_target_path_conn_id = remote_target_path_conn_id
        self.location = location
        self.project = project
        self.poll_interval = poll_interval
        self.labels = dict(labels or {})
        fallback = dict(local_fallback or {})
        # Only the templated part is a template field (and so serialized with the DAG); the worker that runs the
        # fallback has the whole of it, from the DAG file.
        self.local_fallback = {k: fallback.pop(k) for k in _TEMPLATED_FALLBACK if fallback.get(k)}
        self.fallback_settings = fallback
        self.await_on_worker = await_on_worker
        self.start_from_trigger = start_from_trigger and not await_on_worker
        self.dbt_group_id = dbt_group_id
        self.parent_check_interval = parent_check_interval
        self.max_jobs = max_jobs

    @property  # type: ignore[override]
    def execution_timeout(self) -> timedelta | None:
        """What Airflow enforces: the task's execution_timeout, or None while it waits for parents in the triggerer.

        Airflow sets a deferred task's deadline to its deferral time plus execution_timeout; deferred with the run,
        a model would time out while its parents run (before submitting any job). This operator then times its
        own steps instead (:attr:`job_timeout`): the trigger from its parents' end, ``execute`` from its deferral.
        """
        return None if self.wait_for_parents == "triggerer" else self.job_timeout

    @execution_timeout.setter
    def execution_timeout(self, value: timedelta | None) -> None:
        self.job_timeout = value

    @property
    def start_trigger_args(self) -> StartTriggerArgs | None:  # type: ignore[override]
        """Computed when Airflow reads it (DAG serialization), so edges added after rendering count as parents."""
        if not self.start_from_trigger:
            return None
        in_trigger = self.wait_for_parents == "triggerer"
        kwargs = self.trigger_kwargs(end_task=True, parents=self.parent_task_ids() if in_trigger else [],
                                     times_itself=in_trigger)
        return StartTriggerArgs(
            trigger_cls=TRIGGER_CLASSPATH,
            # Airflow hands every start-from-trigger workload the whole serialized DAG: each byte a task saves
            # here is saved once per task of the run when a DAG run's tasks all start in the triggerer.
            trigger_kwargs={k: v for k, v in kwargs.items() if TRIGGER_DEFAULTS.get(k, _UNSET) != v},
            next_method="execute_complete", next_kwargs=None,
            # Waiting for parents must not count against execution_timeout: the trigger times the jobs itself.
            timeout=None if in_trigger else self.job_timeout,
        )

    def parent_task_ids(self) -> list[str]:
        """The task ids this task waits for when it waits in the triggerer: its upstream tasks, and the setup
        tasks above it (trigger rule ``always`` turns off Airflow's own wait for them, e.g. when a clear
        re-runs the setup)."""
        setups = {t.task_id for t in self.get_flat_relatives(upstream=True) if t.is_setup}
        return sorted(set(self.upstream_task_ids) | setups)

    def trigger_kwargs(self, *, end_task: bool, run: dict[str, Any] | None = None,
                       parents: list[str] | None = None, times_itself: bool = False,
                       index_relpath: str | None = None) -> dict[str, Any]:
        """JSON-able trigger arguments; ``run`` (dag/run/task ids) is None when the trigger reads its task instance;
        ``times_itself``: the trigger enforces execution_timeout (no Airflow deadline is set on it);
        ``index_relpath``: the index of this task's nodes compiled again after their parents (None: the setup's)."""
        timeout = self.job_timeout.total_seconds() if self.job_timeout and times_itself else None
        return {"nodes": self.nodes, "gcp_conn_id": self.gcp_conn_id,
                "storage_conn_id": self.remote_target_path_conn_id, "remote_target_path": self.remote_target_path,
                "project": self.project, "location": self.location, "poll_interval": self.poll_interval,
                "labels": self.labels, "end_task": end_task, "run": run, "group_id": self.dbt_group_id,
                "dbt_target": self.dbt_target,
                "parents": parents or [], "parent_check_interval": self.parent_check_interval,
                "max_jobs": self.max_jobs, "execution_timeout_s": timeout, "index_relpath": index_relpath}

    def execute(self, context: Any) -> Any:
        from cosmos_async_triggers.bigquery import BigQueryNodeTrigger

        ti = context["ti"]
        if self.wait_for_parents == "triggerer":
            # On a worker and under `airflow dags test` (which runs triggers inline, one task at a time) a trigger
            # waiting for a parent would hold the only loop the parent could run in: judge here, and come back
            # later while a parent is still running.
            self._check_parents(ti)
        run = {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id, "map_index": ti.map_index}
        trigger = BigQueryNodeTrigger(**self.trigger_kwargs(end_task=False, run=run))
        if self.await_on_worker:
            return self.execute_complete(context, self._await_here(trigger))
        # Here the parents are done: Airflow's deadline from now is execution_timeout counted from their end.
        self.defer(trigger=trigger, method_name="execute_complete", timeout=self.job_timeout)

    def _await_here(self, trigger: Any) -> dict[str, Any]:
        """The trigger's event, awaited in this worker process; stopped (:meth:`on_kill`) or timed out by Airflow,
        the job in flight is cancelled before the task ends."""
        self._awaiting = True
        try:
            return asyncio.run(_first_event(trigger))
        finally:
            self._awaiting = False

    def on_kill(self) -> None:
        """Airflow calls this from its SIGTERM handler when the task is stopped (mark failed/success, clear) and
        after an execution timeout. While the jobs are awaited here, raising leaves the event loop, and
        :func:`_first_event` cancels the job in flight on the way out; a deferred task's trigger has its own."""
        if getattr(self, "_awaiting", False):
            self._awaiting = False  # one raise: a second SIGTERM must not interrupt the cancel
            raise TaskStopped("the task was stopped while its BigQuery job ran on this worker; cancelling it")

    def _check_parents(self, ti: Any) -> None:
        from datetime import datetime, timedelta, timezone

        from airflow.sdk.exceptions import AirflowFailException, AirflowRescheduleException, AirflowSkipException
        from cosmos_async_triggers.parents import FAILED, SKIPPED, WAIT, judge, parent_state

        parents = self.parent_task_ids()
        if not parents:
            return
        answer = (ti.get_task_states(dag_id=ti.dag_id, task_ids=parents, run_ids=[ti.run_id]) or {}).get(ti.run_id)
        verdict = judge(parents, {p: parent_state(answer or {}, p) for p in parents})
        if verdict.outcome == FAILED:
            raise AirflowFailException(f"not run: {verdict.reason}")
        if verdict.outcome == SKIPPED:
            raise AirflowSkipException(f"skipped: {verdict.reason}")
        if verdict.outcome == WAIT:
            self.log.info("waiting for upstream task(s) %s; checking again in %s s", ", ".join(parents),
                          self.parent_check_interval)
            raise AirflowRescheduleException(
                datetime.now(timezone.utc) + timedelta(seconds=self.parent_check_interval))

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        from airflow.exceptions import AirflowException
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException, AirflowTaskTimeout

        event = event or {}
        status = event.get("status")
        if status == "fallback":
            reason = event.get("reason", "the capture marked this node unsafe")
            if event.get("after_parents") and self._can_recompile():
                return self._recompile(context, reason)
            return self._run_locally(reason)
        if status == "upstream_failed":
            # No trigger may set upstream_failed; failing without retries says the same and fails the DAG run.
            raise AirflowFailException(event.get("message"))
        if status == "skipped":
            raise AirflowSkipException(event.get("message"))
        for job in event.get("jobs", []):
            self.log.info("BigQuery job %s: %s", job.get("job_id"), _describe(job))
            if job.get("link"):
                context["ti"].xcom_push(key=JOB_LINK_KEY, value=job["link"])
        for warning in event.get("warnings", []):
            self.log.warning("%s", warning)
        if status == "timeout":
            raise AirflowTaskTimeout(event.get("message"))
        if status != "success":
            raise AirflowException(event.get("message") or f"BigQuery job ended with status {status!r}")
        return event.get("jobs")

    def _can_recompile(self) -> bool:
        """Whether this worker can compile the task's nodes itself (dbt importable here, in-process dbt, no hook)."""
        from cosmos_async.operators.setup import dbt_installed

        invocation = self.fallback_settings.get("invocation")
        return (bool(self.fallback_settings) and not getattr(invocation, "subprocess", False)
                and all(n.get("kind") not in ("hook", "source") for n in self.nodes) and dbt_installed())

    def _recompile(self, context: Any, reason: str) -> None:
        """Compile the task's nodes again now that their parents ran, upload their SQL for this try and defer to
        the trigger, so their jobs run in the triggerer; run them through dbt here when that still cannot be."""
        from pathlib import Path

        from cosmos_async_triggers.bigquery import BigQueryNodeTrigger

        from cosmos_async.dbt.capture import capture_project
        from cosmos_async.dbt.invoke import environment
        from cosmos_async.dbt.partial_parse import state_file
        from cosmos_async.profiles import resolve_target
        from cosmos_async.remote import RemoteTarget, upload_recompiled

        settings = {**self.fallback_settings, **self.local_fallback}
        project_dir, profile, env = Path(settings["project_dir"]), settings["profile_config"], settings.get("env")
        ids = [n["id"] for n in self.nodes]
        self.log.info("compiling %s on this worker now that its parents ran, because %s", ", ".join(ids), reason)
        with environment(env or {}):
            target = resolve_target(profile)
        capture = capture_project(project_dir, profile, select=settings.get("select") or [],
                                  dbt_vars=settings.get("dbt_vars"), full_refresh=settings.get("full_refresh", False),
                                  install_deps=settings.get("install_deps", False), env=env,
                                  partial_parse=state_file(project_dir, profile, target))
        missing = "dbt did not run it when compiling it again"
        still = [f"{uid}: {capture.nodes[uid].fallback if uid in capture.nodes else missing}" for uid in ids
                 if uid not in capture.nodes or capture.nodes[uid].fallback]
        if still:
            return self._run_locally("; ".join(still))
        nodes = {uid: capture.nodes[uid] for uid in ids}
        ti = context["ti"]
        run = {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id, "map_index": ti.map_index}
        remote = RemoteTarget.from_config(self.remote_target_path, self.remote_target_path_conn_id)
        relpath = upload_recompiled(remote, run, nodes, ti.try_number, self.dbt_group_id)
        self.log.info("compiled %s again and uploaded it (%s); its BigQuery job(s) run in the triggerer",
                      ", ".join(ids), relpath)
        trigger = BigQueryNodeTrigger(**self.trigger_kwargs(end_task=False, run=run, index_relpath=relpath))
        self.defer(trigger=trigger, method_name="execute_complete", timeout=self.job_timeout)

    def _run_locally(self, reason: str) -> None:
        from contextlib import nullcontext

        from airflow.exceptions import AirflowException
        from airflow.sdk.execution_time.timeout import timeout

        from cosmos_async.operators.local import run_dbt_command

        if not self.fallback_settings:
            raise AirflowException(f"this node cannot run as a BigQuery job ({reason}) and has no LOCAL fallback")
        self.log.info("running through dbt on this worker (LOCAL) because %s", reason)
        # Where Airflow enforces no execution_timeout on this task (see execution_timeout), the dbt run gets it here.
        limit = self.job_timeout if self.execution_timeout is None else None
        with timeout(limit.total_seconds()) if limit else nullcontext():
            run_dbt_command(**self.fallback_settings, **self.local_fallback, log=self.log)


class TaskStopped(BaseException):
    """Raised out of the worker's event loop when Airflow stops a task that awaits its jobs there. Not an
    Exception, as KeyboardInterrupt is not: no handler on the way may take it for a job's failure."""


async def _first_event(trigger: Any) -> dict[str, Any]:
    """The trigger's event, run to completion in this process (the worker), its HTTP session closed after.

    Interrupted (Airflow's timeout or :meth:`DbtBigQueryAsyncOperator.on_kill` raising out of the loop, which
    then cancels this coroutine), it cancels the job in flight first."""
    from cosmos_async_triggers.rest import close_session

    events = trigger.run()
    try:
        event = await events.__anext__()
    except BaseException:
        await trigger.cancel_running_job()
        raise
    finally:
        await events.aclose()
        await close_session()
    return event.payload


def _describe(job: dict[str, Any]) -> str:
    keys = ("state", "duration_s", "total_bytes_processed", "total_slot_ms", "num_dml_affected_rows", "cache_hit")
    return ", ".join(f"{k}={job[k]}" for k in keys if job.get(k) is not None)
