"""The bounded fault tier on real Airflow: triggerer SIGKILLs, a task marked failed, transient HTTP errors, task
processes SIGKILLed on the worker path, an execution timeout.

One rig for the module (tests/support/faults.py): a 4-model synthetic dbt project (plus its seed, no tests) run
AIRFLOW_ASYNC through the BigQuery job-lifecycle proxy, which holds the product's jobs RUNNING for a few seconds,
counts inserts and cancels per job id and injects faults by rule. Each test checks BigQuery's side (every job
inserted once, nothing cancelled unless a user stopped its task) and the tables (equal to a ``dbt build`` of the
same project). The last test prints and checks the tally.

The long random tier is not collected by pytest: ``python -m tests.e2e.test_faults --rounds 20 --seed N``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.credentials import service_account_key
from tests.support.faults import INSERT_PATH, POLL_PATH, TIMEOUT_S, FaultRig, RunCheck, Tally, log, random_tier

pytestmark = pytest.mark.e2e

KILL, CANCEL, TRANSIENT = "fault_kill", "fault_cancel", "fault_transient"
WORKER, TIMEOUT = "fault_worker", "fault_timeout"  # see tests/support/faults.py DAG_FILE for what the suffix does
TRIGGERER_TIMEOUT = "fault_triggerer_timeout"  # the timeout DAG waiting for parents in the triggerer
CANCEL_RUN, TRANSIENT_RUN, WORKER_RUN = "cancel-1", "transient-1", "worker-1"
HOLD = 5.0  # seconds the proxy keeps each model job RUNNING (test 3 lowers it)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, airflow_pycache: Path, bigquery_emulator,
        token_endpoint) -> Iterator[FaultRig]:
    pycache = airflow_pycache
    key = service_account_key(token_endpoint.url)
    with FaultRig(tmp_path_factory.mktemp("faults"), bigquery_emulator.endpoint, key,
                  [KILL, CANCEL, TRANSIENT, WORKER, TIMEOUT, TRIGGERER_TIMEOUT], hold=HOLD, pycache=pycache) as rig:
        yield rig
        print("\n" + rig.tally.report(), flush=True)


def test_triggerer_sigkill_while_jobs_run_reattaches_without_rerunning(rig: FaultRig) -> None:
    rig.proxy.set_hold(HOLD)
    run_id = "kill-1"
    started = time.monotonic()
    rig.trigger_once(KILL, run_id)
    # Round 1 while the first layer's jobs run, round 2 while jobs run that the restarted triggerer submitted.
    for round_no, tasks in ((1, None), (2, rig.child_models)):
        job_id = rig.wait_running_model_job(KILL, run_id, tasks=tasks, min_left=HOLD - 2)
        log(f"round {round_no}: SIGKILL triggerer at +{time.monotonic() - started:.1f}s while "
            f"{rig.job_task(KILL, run_id, job_id)} is RUNNING")
        pinned = rig.bounce_triggerer_while_running(KILL, run_id)
        log(f"round {round_no}: the new triggerer polled {len(pinned)} RUNNING job(s) of the run at "
            f"+{time.monotonic() - started:.1f}s")
        assert job_id in pinned
        # From here on the run mostly waits on held jobs: build the oracle meanwhile, and start the next test's run
        # once the kills are over.
        rig.oracle_in_background()
    rig.trigger_once(CANCEL, CANCEL_RUN)
    state = rig.af.wait_for_run(KILL, run_id, timeout=150)
    check = rig.check_run(KILL, run_id)
    models_run = check.models_run()
    rig.tally.add_run(check, models_run=models_run)
    reattached = rig.count_reattached(KILL, run_id)
    log(f"{run_id}: {state} in {time.monotonic() - started:.1f}s, {len(check.inserts)} job(s); found again after "
        f"a restart: {dict(reattached)}; jobs through the proxy that no task submitted: {rig.foreign_jobs()}")

    assert state == "success", (check.tasks, rig.af.process_logs())
    assert set(check.tasks.values()) == {"success"}, check.tasks
    assert check.duplicates() == {}, check.inserts
    assert check.cancels == {}, check.cancels
    assert len(check.model_jobs()) == len(models_run) == 4, (check.model_jobs(), models_run)
    # Logs of a SIGKILLed triggerer can be lost, so this is a lower bound; the proxy's counts above are exact.
    assert reattached["running"] >= 2, reattached
    assert check.early_children == [], check.early_children
    assert rig.wrong_tables(KILL) == []


def test_task_marked_failed_cancels_its_running_job_and_stops_dependents(rig: FaultRig) -> None:
    rig.proxy.set_hold(HOLD)
    run_id = CANCEL_RUN
    target = next(t for t in rig.task_ids if t.startswith("model_") and rig.children[t])
    job_id = rig.task_job(CANCEL, run_id, target)
    rig.trigger_once(CANCEL, run_id)
    deadline = time.monotonic() + 180
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

    deadline = time.monotonic() + 30
    while rig.proxy.stats()["cancels"].get(job_id, 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    # Only the other root model's job is left: start the next test's run so that its setup overlaps this wait.
    rig.trigger_once(TRANSIENT, TRANSIENT_RUN)
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


def test_transient_http_errors_on_submit_and_poll_are_retried_without_resubmitting(rig: FaultRig) -> None:
    rig.proxy.set_hold(2.0)
    run_id = TRANSIENT_RUN
    rig.trigger_once(TRANSIENT, run_id)
    rig.wait_task(TRANSIENT, run_id, "dbt_setup_async", {"success"})  # faults for the node jobs only
    # None of the models may have submitted a job yet (whichever process releases them).
    assert not rig.run_jobs_inserted(TRANSIENT, run_id), "the models started before the faults were in place"
    before = rig.proxy.fired()
    rig.add_http_faults([
        ("POST", INSERT_PATH, 503, 2, False),
        ("POST", INSERT_PATH, 429, 1, False),
        ("POST", INSERT_PATH, 503, 1, True),  # the job is created, its answer lost: the retry must attach
        ("GET", POLL_PATH, 503, 3, False),
        ("GET", POLL_PATH, 429, 2, False),
        ("GET", POLL_PATH, "reset", 1, False),
    ])
    state = rig.af.wait_for_run(TRANSIENT, run_id, timeout=120)
    fired = rig.count_fired(before)
    check = rig.check_run(TRANSIENT, run_id)
    models_run = check.models_run()
    rig.tally.add_run(check, models_run=models_run)
    log(f"{run_id}: {state}; faults fired {dict(fired)}, left {rig.proxy.pending_faults()}")

    assert state == "success", (check.tasks, rig.af.process_logs())
    assert rig.proxy.pending_faults() == [], "every injected fault should have hit a request"
    assert sum(fired.values()) == 10, fired
    assert check.duplicates() == {}, check.inserts
    assert check.cancels == {}, check.cancels
    assert len(check.model_jobs()) == len(models_run) == 4, (check.model_jobs(), models_run)
    assert check.early_children == [], check.early_children
    assert rig.wrong_tables(TRANSIENT) == []


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
    rig.wait_task(dag_id, run_id, target, {"failed", "success", "up_for_retry"})
    rig.proxy.set_hold(0)
    others = [j for j in rig.proxy.running() if rig.job_task(dag_id, run_id, j)]
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


def test_tally(rig: FaultRig) -> None:
    """The counts over the tier: printed, and held to: faults were injected, one job per model, right tables."""
    tally: Tally = rig.tally
    print("\n" + tally.report(), flush=True)
    assert tally.runs == 6, tally.report()
    assert tally.faults["triggerer_sigkill"] >= 2 and tally.faults["marked_failed"] == 1, tally.report()
    assert tally.faults["task_sigkill"] >= 1 and tally.faults["execution_timeout"] == 2, tally.report()
    assert sum(tally.faults.values()) >= 15, tally.report()
    assert tally.jobs_submitted == tally.models_run, tally.report()
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
