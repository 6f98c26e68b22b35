"""The bounded fault tier on real Airflow: triggerer SIGKILLs, a task marked failed, transient HTTP errors, task
processes SIGKILLed on the worker path, an execution timeout; and what waiting for parents in the triggerer
(wait_for_parents="triggerer") must keep of Cosmos LOCAL's semantics: a parent up for retry, a failed model cleared
with its downstream, a parent marked success by hand, a failed setup.

One rig for the module (tests/support/faults.py): a 4-model synthetic dbt project (plus its seed, no tests) run
AIRFLOW_ASYNC through the BigQuery job-lifecycle proxy, which holds the product's jobs RUNNING for a few seconds,
counts inserts and cancels per job id and injects faults by rule. Each test checks BigQuery's side (every job
inserted once, nothing cancelled unless a user stopped its task, no child's job started before its parents' jobs
ended) and the tables (equal to a ``dbt build`` of the same project). The last test prints and checks the tally.

Runs overlap to keep the module short: the SIGKILLs and the transient errors hit a run of each mode at once, and
the runs of the triggerer-mode semantics tests start together with the transient ones.

The long random tier is not collected by pytest: ``python -m tests.e2e.test_faults --rounds 20 --seed N``.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cosmos_async_triggers.layout import job_id_base

from tests.support.airflow import AirflowStackError, deadline_in
from tests.support.credentials import service_account_key
from tests.support.faults import (
    INSERT_PATH,
    POLL_PATH,
    SETUP,
    TEARDOWN,
    TIMEOUT_S,
    FaultRig,
    RunCheck,
    Tally,
    log,
    random_tier,
)

pytestmark = pytest.mark.e2e

KILL, CANCEL, TRANSIENT = "fault_kill", "fault_cancel", "fault_transient"
WORKER, TIMEOUT = "fault_worker", "fault_timeout"  # see tests/support/faults.py DAG_FILE for what the suffix does
TRIGGERER_TIMEOUT = "fault_triggerer_timeout"  # the timeout DAG waiting for parents in the triggerer
# Waiting for parents in the triggerer: SIGKILLs and transient errors as above, and the semantics tests' DAGs.
TRIGGERER_KILL, TRIGGERER_TRANSIENT = "fault_triggerer_kill", "fault_triggerer_transient"
RETRY, CLEAR, MARKED, NOSETUP = ("fault_triggerer_retry", "fault_triggerer_clear", "fault_triggerer_marked",
                                 "fault_triggerer_nosetup")
CAP1 = "fault_triggerer_cap1"  # one model job at a time per triggerer process
CANCEL_RUN, TRANSIENT_RUN, WORKER_RUN = "cancel-1", "transient-1", "worker-1"
TRANSIENT_RUNS = [(TRANSIENT, TRANSIENT_RUN), (TRIGGERER_TRANSIENT, "transient-triggerer-1")]
RETRY_RUN, CLEAR_RUN, MARKED_RUN, NOSETUP_RUN = "retry-1", "clear-1", "marked-1", "nosetup-1"
TRANSIENT_RULES: list[tuple[str, str, int | str, int, bool]] = [
    ("POST", INSERT_PATH, 503, 2, False),
    ("POST", INSERT_PATH, 429, 1, False),
    ("POST", INSERT_PATH, 503, 1, True),  # the job is created, its answer lost: the retry must attach
    ("GET", POLL_PATH, 503, 3, False),
    ("GET", POLL_PATH, 429, 2, False),
    ("GET", POLL_PATH, "reset", 1, False),
]
HOLD = 5.0  # seconds the proxy keeps each model job RUNNING (test 3 lowers it)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, airflow_pycache: Path, bigquery_emulator,
        token_endpoint) -> Iterator[FaultRig]:
    pycache = airflow_pycache
    key = service_account_key(token_endpoint.url)
    with FaultRig(tmp_path_factory.mktemp("faults"), bigquery_emulator.endpoint, key,
                  [KILL, CANCEL, TRANSIENT, WORKER, TIMEOUT, TRIGGERER_TIMEOUT, TRIGGERER_KILL,
                   TRIGGERER_TRANSIENT, RETRY, CLEAR, MARKED, NOSETUP, CAP1], hold=HOLD, pycache=pycache) as rig:
        yield rig
        print("\n" + rig.tally.report(), flush=True)


def test_triggerer_sigkill_while_jobs_run_reattaches_without_rerunning(rig: FaultRig) -> None:
    """Both modes through the same SIGKILLs: a run released by the scheduler, and one whose models wait for their
    parents in the triggerer (killed first while its children wait there on their parents' RUNNING jobs)."""
    rig.proxy.set_hold(HOLD)
    runs = [(KILL, "kill-1"), (TRIGGERER_KILL, "kill-triggerer-1")]
    started = time.monotonic()
    for dag_id, run_id in runs:
        rig.trigger_once(dag_id, run_id)
    # Round 1 while the first layer's jobs run, round 2 while jobs run that the restarted triggerer submitted.
    for round_no, tasks in ((1, None), (2, rig.child_models)):
        jobs = rig.pin_running_model_jobs(runs, tasks=tasks, min_left=HOLD - 2)
        log(f"round {round_no}: SIGKILL triggerer at +{time.monotonic() - started:.1f}s while "
            f"{[rig.job_task(*run, job) for run, job in jobs.items()]} are RUNNING")
        if round_no == 1:
            waiting = rig.states(*runs[1])
            assert all(waiting[c] == "deferred" for c in rig.child_models), waiting
            assert not set(rig.run_jobs(*runs[1]).values()) & rig.child_models, "a child ran before its parents"
        pinned = rig.bounce_triggerer_while_running(runs)
        log(f"round {round_no}: the new triggerer polled {len(pinned)} RUNNING job(s) of the runs at "
            f"+{time.monotonic() - started:.1f}s")
        assert set(jobs.values()) <= set(pinned), (jobs, pinned)
        # From here on the runs mostly wait on held jobs: build the oracle meanwhile, and start the next test's run
        # once the kills are over.
        rig.oracle_in_background()
    # Pinned: should these runs take longer than the whole early run, its job must still be there to cancel.
    rig.proxy.pin_when_inserted(rig.task_job(CANCEL, CANCEL_RUN, _cancel_target(rig)))
    rig.trigger_once(CANCEL, CANCEL_RUN)
    for dag_id, run_id in runs:
        state = rig.af.wait_for_run(dag_id, run_id, timeout=150)
        check = rig.check_run(dag_id, run_id)
        models_run = check.models_run()
        rig.tally.add_run(check, models_run=models_run)
        reattached = rig.count_reattached(dag_id, run_id)
        log(f"{run_id}: {state} in {time.monotonic() - started:.1f}s, {len(check.inserts)} job(s); found again "
            f"after a restart: {dict(reattached)}; jobs through the proxy that no task submitted: "
            f"{rig.foreign_jobs()}")

        assert state == "success", (check.tasks, rig.af.process_logs())
        assert set(check.tasks.values()) == {"success"}, check.tasks
        assert check.duplicates() == {}, check.inserts
        assert check.cancels == {}, check.cancels
        assert len(check.model_jobs()) == len(models_run) == 4, (check.model_jobs(), models_run)
        # Logs of a SIGKILLed triggerer can be lost, so this is a lower bound; the proxy's counts above are exact.
        assert reattached["running"] >= 2, reattached
        assert check.early_children == [], check.early_children
        assert rig.wrong_tables(dag_id) == []


def _cancel_target(rig: FaultRig) -> str:
    """The model the cancel test marks failed while its job runs: the first one with children."""
    return next(t for t in rig.task_ids if t.startswith("model_") and rig.children[t])


def test_task_marked_failed_cancels_its_running_job_and_stops_dependents(rig: FaultRig) -> None:
    rig.proxy.set_hold(HOLD)
    run_id = CANCEL_RUN
    target = _cancel_target(rig)
    job_id = rig.task_job(CANCEL, run_id, target)
    rig.trigger_once(CANCEL, run_id)
    deadline = deadline_in(180)
    while job_id not in rig.proxy.running():
        assert time.monotonic() < deadline, (f"{target}'s job {job_id} never RUNNING", rig.proxy.stats())
        assert rig.af.run_state(CANCEL, run_id) not in ("success", "failed"), rig.states(CANCEL, run_id)
        time.sleep(0.1)
    # RUNNING until cancelled: under CI load the PATCH and the triggerer's next look at its assignment took longer
    # than the hold left, the job ended first and on_kill rightly found nothing to cancel.
    rig.proxy.pin([job_id])
    time.sleep(1)
    patched = rig.mark_failed(CANCEL, run_id, target)
    log(f"{run_id}: marked {target} failed while its job {job_id} is RUNNING")
    assert [t["state"] for t in patched] == ["failed"], patched

    deadline = deadline_in(30)
    while rig.proxy.stats()["cancels"].get(job_id, 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    # Only the other root model's job is left: start the next test's runs so that their setup overlaps this wait.
    _start_transient_runs(rig)
    state = rig.af.wait_for_run(CANCEL, run_id, timeout=120)
    time.sleep(1)  # a second cancel would arrive by now
    check = rig.check_run(CANCEL, run_id)
    models_run = check.models_run(extra={target})
    rig.tally.add_run(check, models_run=models_run, expected_cancels={job_id})
    dependents = rig.children[target]
    log(f"{run_id}: {state}; cancels {check.cancels}; dependents {dependents}: "
        f"{[check.tasks[d] for d in dependents]}")

    assert check.cancels == {job_id: 1}, (check.cancels, rig.af.task_log(CANCEL, run_id, target))
    assert state == "failed", check.tasks
    assert check.tasks[target] == "failed", check.tasks
    assert all(check.tasks[d] == "upstream_failed" for d in dependents), check.tasks
    assert not any(check.job_task[j] in dependents for j in check.inserts), "a dependent submitted a job"
    assert check.early_children == [], check.early_children
    assert check.tasks["dbt_teardown_async"] == "success", check.tasks
    assert check.duplicates() == {}, check.inserts
    assert sum(check.model_jobs().values()) == len(models_run), (check.model_jobs(), models_run)
    succeeded = [t for t, s in check.tasks.items() if t in rig.task_ids and s == "success"]
    assert rig.wrong_tables(CANCEL, succeeded) == []


def _start_transient_runs(rig: FaultRig) -> None:
    """Each run of TRANSIENT_RUNS with its own TRANSIENT_RULES, on its model jobs only, in place before it starts."""
    for dag_id, run_id in TRANSIENT_RUNS:
        if (dag_id, run_id) not in rig.triggered:
            rig.add_http_faults(TRANSIENT_RULES, job=rig.job_regex(dag_id, run_id))
            rig.trigger_once(dag_id, run_id)


def test_transient_http_errors_on_submit_and_poll_are_retried_without_resubmitting(rig: FaultRig) -> None:
    """In both modes at once, each run hit by the same rules on its own jobs."""
    rig.proxy.set_hold(2.0)
    before = rig.proxy.fired()
    _start_transient_runs(rig)
    _start_semantic_runs(rig)  # their jobs are held as long as these
    for dag_id, run_id in TRANSIENT_RUNS:
        state = rig.af.wait_for_run(dag_id, run_id, timeout=180)
        check = rig.check_run(dag_id, run_id)
        models_run = check.models_run()
        rig.tally.add_run(check, models_run=models_run)
        log(f"{run_id}: {state}; {len(check.inserts)} job(s)")

        assert state == "success", (check.tasks, rig.af.process_logs())
        assert check.duplicates() == {}, check.inserts
        assert check.cancels == {}, check.cancels
        assert len(check.model_jobs()) == len(models_run) == 4, (check.model_jobs(), models_run)
        assert check.early_children == [], check.early_children
        assert rig.wrong_tables(dag_id) == []
    fired = rig.count_fired(before)
    log(f"transient faults fired {dict(fired)}")
    # Each run's rules match its own jobs only: none left means each run got all of its faults.
    pending = [f for f in rig.proxy.pending_faults() if f["action"] != "job_error"]  # the semantics runs' own
    assert pending == [], "every injected fault should have hit a request"
    assert sum(fired.values()) == 2 * sum(rule[3] for rule in TRANSIENT_RULES), fired


# ---- waiting for parents in the triggerer: what Cosmos LOCAL users know --------------------------------------------

def _parent(rig: FaultRig) -> str:
    """The first root model that other models depend on."""
    return next(t for t in rig.task_ids if t.startswith("model_") and rig.children[t])


def _start_semantic_runs(rig: FaultRig) -> None:
    """Start the semantics tests' runs together, each with its faults in place first: the parent's first job fails
    (invalidQuery) in RETRY (which retries once) and in CLEAR (which does not); MARKED's parent's job stays RUNNING
    until the test marks the task success; NOSETUP's setup fails."""
    parent = _parent(rig)
    if (RETRY, RETRY_RUN) in rig.triggered:
        return
    for dag_id, run_id in ((RETRY, RETRY_RUN), (CLEAR, CLEAR_RUN)):
        rig.proxy.add_fault("POST", INSERT_PATH, "job_error", job=re.escape(rig.task_job(dag_id, run_id, parent)),
                            reason="invalidQuery", message="Syntax error: injected by the fault tier")
    rig.proxy.pin_when_inserted(rig.task_job(MARKED, MARKED_RUN, parent))
    for dag_id, run_id in ((RETRY, RETRY_RUN), (CLEAR, CLEAR_RUN), (MARKED, MARKED_RUN), (NOSETUP, NOSETUP_RUN)):
        rig.trigger_once(dag_id, run_id)


def _check_semantic_run(rig: FaultRig, dag_id: str, run_id: str, *, expected_cancels: set[str] = frozenset(),
                        extra: set[str] = frozenset(), marked_success: str | None = None) -> RunCheck:
    """The run's check, counted in the tally; what every successful run of these tests must show.

    ``marked_success``: a parent the user marked success while its job ran. Airflow takes the state at once and
    the job's cancel follows (the trigger's on_kill), so its children may start before that job ended: they are
    checked against the moment of the mark instead (by the test)."""
    check = rig.check_run(dag_id, run_id)
    check.early_children = [e for e in check.early_children if e.split("<")[1] != marked_success]
    models_run = check.models_run(extra=extra)
    rig.tally.faults["job_error"] += len(check.failed_jobs)
    rig.tally.add_run(check, models_run=models_run, expected_cancels=expected_cancels)
    log(f"{run_id}: {check.state}; tasks {check.tasks}; jobs {check.inserts}; failed by a fault "
        f"{sorted(check.failed_jobs)}; cancels {check.cancels}; gaps {check.gaps}")
    assert check.state == "success", (check.tasks, rig.af.process_logs())
    assert set(check.tasks.values()) == {"success"}, check.tasks
    assert check.duplicates() == {}, check.inserts
    assert check.cancels == dict.fromkeys(expected_cancels, 1), check.cancels
    # One job per model, and one more for each job a fault failed (its model ran again).
    assert sum(check.model_jobs().values()) == len(models_run) + len(check.failed_jobs), check.inserts
    assert check.early_children == [], check.early_children
    assert rig.wrong_tables(dag_id) == []
    return check


def test_triggerer_mode_parent_up_for_retry_keeps_its_children_waiting(rig: FaultRig) -> None:
    """The parent's first try fails (its job: invalidQuery) and goes up for retry; its children keep waiting and
    submit nothing until the second try's job ended, then run; the DAG run succeeds."""
    _start_semantic_runs(rig)
    parent = _parent(rig)
    first_job = rig.task_job(RETRY, RETRY_RUN, parent)
    rig.af.wait_for_run(RETRY, RETRY_RUN, timeout=240)
    check = _check_semantic_run(rig, RETRY, RETRY_RUN)

    assert check.failed_jobs == {first_job}, check.failed_jobs
    assert rig.tries(RETRY, RETRY_RUN)[parent] == 2
    assert "invalidQuery" in rig.af.task_log(RETRY, RETRY_RUN, parent, try_number=1)
    timeline = rig.proxy.timeline()
    second_done = timeline[f"{first_job[:-1]}1"][1]
    for child in rig.children[parent]:
        child_jobs = [j for j, t in check.job_task.items() if t == child]
        assert child_jobs and all(timeline[j][0] >= second_done for j in child_jobs), (child, timeline)


def test_triggerer_mode_clearing_a_failed_model_with_its_downstream_reruns_them_in_order(rig: FaultRig) -> None:
    """The parent fails for good (its job: invalidQuery, no retries): its children fail without running, naming
    it. Cleared with its downstream (as in the UI), the parent and then its children run; the DAG run succeeds."""
    _start_semantic_runs(rig)
    parent = _parent(rig)
    assert rig.af.wait_for_run(CLEAR, CLEAR_RUN, timeout=240) == "failed", rig.states(CLEAR, CLEAR_RUN)
    states = rig.states(CLEAR, CLEAR_RUN)
    assert states[parent] == "failed", states
    for child in rig.children[parent]:
        assert states[child] == "failed", states
        assert f"not run: upstream task '{parent}' ended failed" in rig.af.task_log(CLEAR, CLEAR_RUN, child)
    assert not set(rig.run_jobs(CLEAR, CLEAR_RUN).values()) & set(rig.children[parent]), "a child ran"

    cleared = rig.clear_with_downstream(CLEAR, CLEAR_RUN, parent)
    log(f"{CLEAR_RUN}: cleared {sorted(cleared)}")
    assert {parent, *rig.children[parent], SETUP, TEARDOWN} <= cleared, cleared
    deadline = deadline_in(30)
    while rig.af.run_state(CLEAR, CLEAR_RUN) == "failed":  # until the clear has put the run back in the queue
        assert time.monotonic() < deadline, "the cleared run never left the failed state"
        time.sleep(0.2)
    rig.af.wait_for_run(CLEAR, CLEAR_RUN, timeout=240)
    check = _check_semantic_run(rig, CLEAR, CLEAR_RUN)

    assert check.failed_jobs == {rig.task_job(CLEAR, CLEAR_RUN, parent)}, check.failed_jobs
    tries = rig.tries(CLEAR, CLEAR_RUN)
    assert all(tries[t] == 2 for t in (parent, *rig.children[parent])), tries


def test_triggerer_mode_parent_marked_success_by_hand_releases_its_children(rig: FaultRig) -> None:
    """While the parent's job is RUNNING the user marks the parent success: the job is cancelled (the task no
    longer runs it, as for a mark failed), the children run after the mark (not necessarily after the cancel, which
    follows it) and the DAG run succeeds."""
    _start_semantic_runs(rig)
    parent = _parent(rig)
    job_id = rig.task_job(MARKED, MARKED_RUN, parent)
    deadline = deadline_in(240)
    while job_id not in rig.proxy.running():
        assert time.monotonic() < deadline, (f"{parent}'s job {job_id} never RUNNING", rig.proxy.stats())
        time.sleep(0.2)
    time.sleep(2 * rig.proxy.hold)  # the other root's job ends: only the pinned parent keeps the children waiting
    assert not set(rig.run_jobs(MARKED, MARKED_RUN).values()) & set(rig.children[parent]), "a child did not wait"
    marked_at = time.monotonic()
    patched = rig.mark_success(MARKED, MARKED_RUN, parent)
    log(f"{MARKED_RUN}: marked {parent} success while its job {job_id} is RUNNING")
    assert [t["state"] for t in patched] == ["success"], patched
    try:
        rig.af.wait_for_run(MARKED, MARKED_RUN, timeout=180)
    finally:
        rig.proxy.release([job_id])
    check = _check_semantic_run(rig, MARKED, MARKED_RUN, expected_cancels={job_id}, extra={parent},
                                marked_success=parent)
    timeline = rig.proxy.timeline()
    started = {t: timeline[j][0] - marked_at for j, t in check.job_task.items() if t in rig.children[parent]}
    cancelled = timeline[job_id][1] - marked_at
    log(f"{MARKED_RUN}: from the mark, children's jobs started at {started}, the parent's job cancelled at "
        f"{cancelled:.2f}s")
    assert set(started) == set(rig.children[parent]) and min(started.values()) > 0, started


def test_triggerer_mode_failed_setup_submits_no_job_and_teardown_still_runs(rig: FaultRig) -> None:
    """The setup task cannot write the remote target path: no job of the run is submitted, every node task ends
    without running SQL (failed, one line naming the upstream task that failed), teardown still runs."""
    _start_semantic_runs(rig)
    state = rig.af.wait_for_run(NOSETUP, NOSETUP_RUN, timeout=240)
    states = rig.states(NOSETUP, NOSETUP_RUN)
    check = rig.check_run(NOSETUP, NOSETUP_RUN)
    rig.tally.add_run(check, models_run=[])
    hooks = {job_id_base(NOSETUP, t, NOSETUP_RUN) for t in ("dbt_on_run_start", "dbt_on_run_end")}
    hook_jobs = [j for j in rig.proxy.stats()["inserts"] if any(j.startswith(h) for h in hooks)]
    log(f"{NOSETUP_RUN}: {state}; tasks {states}")

    assert state == "failed", states
    assert states[SETUP] == "failed", states
    assert "remote-blocked" in rig.af.task_log(NOSETUP, NOSETUP_RUN, SETUP)
    assert check.inserts == {} and hook_jobs == [], (check.inserts, hook_jobs)
    for task in rig.task_ids:
        assert states[task] == "failed", states
        assert "not run: upstream task '" in rig.af.task_log(NOSETUP, NOSETUP_RUN, task), task
    assert states[TEARDOWN] == "success", states


def test_task_process_sigkilled_after_its_job_ran_retries_and_reattaches_worker_path(rig: FaultRig) -> None:
    """Worker path: the trigger submits, the task resumes on a worker. Its first try dies there (SIGKILL, from a
    fault-injection hook in the test DAG); Airflow's retry defers again and must find the job, not run it again.

    Airflow 3.3 sometimes fails the first try itself before it resumes: the executor's late "success" for the
    process that deferred arrives after the task was queued to resume, and the scheduler takes it for a task
    changed externally (apache/airflow#72716). The held jobs make that rare; either way the retry must reattach.
    """
    rig.proxy.set_hold(10.0)
    run_id = WORKER_RUN
    rig.trigger_once(WORKER, run_id)
    state = rig.af.wait_for_run(WORKER, run_id, timeout=240)
    killed = rig.killed_on_resume(WORKER, run_id)
    tries = rig.tries(WORKER, run_id)
    check = rig.check_run(WORKER, run_id)
    models_run = check.models_run()
    rig.tally.add_run(check, models_run=models_run)
    failed_by_airflow = sorted(t for t in models_run if t not in killed and tries[t] == 2)
    found_done = sorted(t for t in models_run if "already succeeded; not running the SQL again"
                        in rig.af.task_log(WORKER, run_id, t, try_number=2))
    log(f"{run_id}: {state}; first try SIGKILLed on resume {killed}, failed by Airflow's stale executor event "
        f"{failed_by_airflow}; tries {tries}; jobs {check.inserts}")

    assert state == "success", (check.tasks, rig.af.process_logs())
    assert len(models_run) == 4 and killed, (killed, models_run)
    assert all(tries[t] == 2 for t in models_run), tries
    assert found_done == models_run, "each retry found its job done instead of submitting it"
    assert check.duplicates() == {}, check.inserts
    assert check.cancels == {}, check.cancels
    assert len(check.model_jobs()) == 4, check.model_jobs()
    assert check.early_children == [], check.early_children
    assert rig.wrong_tables(WORKER) == []


def _timeout_run(rig: FaultRig, dag_id: str, run_id: str) -> tuple[str, RunCheck]:
    """Run ``dag_id`` with its first model's job held past that task's execution_timeout; the run's check."""
    rig.proxy.set_hold(120)
    target = "model_00000_run"
    job_id = rig.task_job(dag_id, run_id, target)
    rig.trigger_once(dag_id, run_id)
    try:
        rig.wait_running_model_job(dag_id, run_id, tasks={target}, min_left=0.0, timeout=TIMEOUT_S + 60)
    except AirflowStackError as exc:
        raise AssertionError(f"{target}'s job was never RUNNING, so its timeout cannot cancel it: {exc}") from exc
    rig.wait_task(dag_id, run_id, target, {"failed", "success", "up_for_retry"})
    # The task fails when the scheduler times it out; the triggerer cancels its trigger (which cancels the job) at
    # its next look, a moment later: the job stays held until then, or it would end DONE first.
    deadline = deadline_in(60)
    while not rig.proxy.stats()["cancels"].get(job_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    rig.proxy.set_hold(0)
    others = [j for j in rig.proxy.running() if rig.job_task(dag_id, run_id, j) and j != job_id]
    rig.proxy.pin(others)  # the other root model's job, held as long: let it finish now
    rig.proxy.release(others)
    state = rig.af.wait_for_run(dag_id, run_id, timeout=120)
    time.sleep(1)  # a late second cancel would arrive by now
    check = rig.check_run(dag_id, run_id)
    rig.tally.faults["execution_timeout"] += 1
    rig.tally.add_run(check, models_run=check.models_run(extra={target}), expected_cancels={job_id})
    log(f"{run_id}: {state}; {target} had execution_timeout={TIMEOUT_S}s; cancels {check.cancels}; "
        f"tasks {check.tasks}")

    assert check.cancels == {job_id: 1}, (check.cancels, rig.af.task_log(dag_id, run_id, target))
    assert state == "failed", check.tasks
    assert check.tasks[target] == "failed", check.tasks
    assert "timeout" in rig.af.task_log(dag_id, run_id, target).lower()
    assert check.duplicates() == {}, check.inserts
    assert check.early_children == [], check.early_children
    return target, check


def test_execution_timeout_cancels_the_running_job(rig: FaultRig) -> None:
    target, check = _timeout_run(rig, TIMEOUT, "timeout-1")
    assert all(check.tasks[d] == "upstream_failed" for d in rig.children[target]), check.tasks


def test_execution_timeout_cancels_the_running_job_in_triggerer_mode(rig: FaultRig) -> None:
    """wait_for_parents="triggerer": the trigger times its jobs itself (no Airflow deadline while it waits for
    parents), cancels the job in flight, and the children give up naming the timed-out parent."""
    run_id = "timeout-triggerer-1"
    target, check = _timeout_run(rig, TRIGGERER_TIMEOUT, run_id)
    for child in rig.children[target]:
        assert check.tasks[child] == "failed", check.tasks
        assert f"upstream task '{target}' ended failed" in rig.af.task_log(TRIGGERER_TIMEOUT, run_id, child)
    assert not any(check.job_task[j] in rig.children[target] for j in check.inserts), "a child submitted a job"


def test_two_triggerers_share_a_triggerer_mode_run_without_submitting_twice(rig: FaultRig) -> None:
    """Two triggerer processes (capacity 4 each, so a run's 6 triggers cannot all sit in one) share a run whose
    models wait for their parents in the triggerer: each process has its own board and job cap, a child learns of a
    parent in the other process from the batched state checks; no job is submitted twice, none early. The run's
    cap is one job: the README's "N triggerers, up to N x the cap" — never two at once in one process."""
    rig.proxy.set_hold(2.0)
    run_id = "two-triggerers-1"
    capacity = {"AIRFLOW__TRIGGERER__CAPACITY": "4"}
    rig.af.kill_triggerer()  # nothing is deferred now: no trigger is lost
    rig.af.start_component("triggerer", extra_env=capacity)
    rig.af.start_component("triggerer-2", command="triggerer", extra_env=capacity)
    seen: dict[str, set[int]] = {}
    try:
        rig.trigger_once(CAP1, run_id)
        deadline = deadline_in(240)
        while rig.af.run_state(CAP1, run_id) not in ("success", "failed"):
            assert time.monotonic() < deadline, rig.states(CAP1, run_id)
            for ti in rig.af.task_instances(CAP1, run_id):
                if (ti.get("trigger") or {}).get("triggerer_id") is not None:
                    seen.setdefault(ti["task_id"], set()).add(ti["trigger"]["triggerer_id"])
            time.sleep(0.3)
    finally:
        rig.af.remove_component("triggerer-2")
        rig.af.kill_triggerer()
        rig.af.start_triggerer()
    check = rig.check_run(CAP1, run_id)
    models_run = check.models_run()
    rig.tally.add_run(check, models_run=models_run)
    log(f"{run_id}: {check.state}; triggerer job ids per task {seen}; jobs {check.inserts}; gaps {check.gaps}")

    assert len(set().union(*seen.values())) == 2, seen
    assert check.state == "success", (check.tasks, rig.af.process_logs())
    assert set(check.tasks.values()) == {"success"}, check.tasks
    assert check.duplicates() == {}, check.inserts
    assert check.cancels == {}, check.cancels
    assert len(check.model_jobs()) == len(models_run) == 4, (check.model_jobs(), models_run)
    assert check.early_children == [], check.early_children
    assert rig.wrong_tables(CAP1) == []
    timeline = rig.proxy.timeline()
    spans = {check.job_task[j]: timeline[j] for j in check.model_jobs() if j in timeline}
    together = [(a, b) for a in spans for b in spans if a < b
                and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]]
    # Overlapping jobs ran in different processes (a task seen in one triggerer only ran its job there).
    assert all(seen.get(a) != seen.get(b) or len(seen.get(a) or ()) > 1 for a, b in together), (together, seen)
    assert max((sum(1 for s in spans.values() if s[0] <= t < s[1]) for t, _ in spans.values()), default=0) <= 2
    # on-run-start ran on a worker (deferred, it would queue behind the run's node triggers), never in a triggerer.
    start = {ti["task_id"]: ti for ti in rig.af.task_instances(CAP1, run_id)}["dbt_on_run_start"]
    assert start["pid"] is not None and "dbt_on_run_start" not in seen, (start, seen)


def test_tally(rig: FaultRig) -> None:
    """The counts over the tier: printed, and held to: faults were injected, one job per model, right tables."""
    tally: Tally = rig.tally
    print("\n" + tally.report(), flush=True)
    assert tally.runs == 13, tally.report()
    assert tally.faults["triggerer_sigkill"] >= 2 and tally.faults["marked_failed"] == 1, tally.report()
    assert tally.faults["task_sigkill"] >= 1 and tally.faults["execution_timeout"] == 2, tally.report()
    assert tally.faults["marked_success"] == 1 and tally.faults["cleared"] == 1, tally.report()
    assert tally.faults["job_error"] == 2, tally.report()
    assert sum(tally.faults.values()) >= 30, tally.report()
    assert tally.jobs_submitted == tally.models_run + tally.jobs_failed_by_fault, tally.report()
    assert tally.duplicates == 0 and tally.unexpected_cancels == 0, tally.report()
    assert tally.early_children == 0 and tally.gaps, tally.report()
    assert tally.tables_checked > 0 and tally.wrong_tables == [], tally.report()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The long random fault tier: random triggerer SIGKILLs per run.")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hold", type=float, default=6.0, help="seconds each BigQuery job stays RUNNING")
    parser.add_argument("--workdir", type=Path, help="default: a new temporary directory")
    args = parser.parse_args(argv)
    return random_tier(args.rounds, args.seed, args.workdir, hold=args.hold)


if __name__ == "__main__":
    sys.exit(main())
