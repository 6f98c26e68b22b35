"""Waiting in the triggerer for a task's parent tasks, instead of for Airflow's scheduler to release the task.

A parent is an Airflow task id of the same DAG run; nothing here knows about dbt. Two ways a parent's outcome
reaches a waiting trigger, in one small registry per triggerer process (one board per DAG run):

* a parent whose trigger runs in this process :func:`publish`\\ es its outcome when it ends, and the children
  waiting on that board wake at once;
* everything else (a parent in another triggerer, on a worker, marked by hand, up for retry) is learnt from one
  batched ``GetTaskStates`` per board per interval for the union of the parents its waiters still wait for.

Only final outcomes are published: a trigger's job failure is not (the task may go up for retry), so that
parent's children learn its fate from Airflow's state.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

SUCCESS = "success"
FAILED = "failed"  # failed for good: the parent's own failure or one propagated from its parents
SKIPPED = "skipped"
WAIT = "wait"
_FAILED_STATES = frozenset({"failed", "upstream_failed"})
_SKIPPED_STATES = frozenset({"skipped", "removed"})
# New waiters arriving together (a DAG run defers all its node tasks at once) share one state check.
_COALESCE_S = 0.05

StateFetcher = Callable[[str, str, list[str]], Awaitable[Mapping[str, Any]]]


@dataclass(frozen=True)
class Verdict:
    """What a task should do about its parents: run (SUCCESS), not run (FAILED / SKIPPED), or WAIT."""

    outcome: str
    parent: str | None = None  # the parent that decided a FAILED / SKIPPED verdict
    parent_state: str | None = None

    @property
    def reason(self) -> str:
        return f"upstream task {self.parent!r} ended {self.parent_state}" if self.parent else ""


def parent_state(states: Mapping[str, Any], task_id: str) -> str | None:
    """The state of ``task_id`` in a ``GetTaskStates`` answer; a mapped parent's map indexes count together."""
    if task_id in states:
        return _name(states[task_id])
    pattern = re.compile(rf"{re.escape(task_id)}_\d+")
    mapped = [_name(v) for k, v in states.items() if pattern.fullmatch(k)]
    if not mapped:
        return None
    for outcome in (_FAILED_STATES, {"none", "scheduled", "queued", "running", "deferred", "up_for_retry",
                                     "up_for_reschedule", "restarting"}):
        worst = next((s for s in mapped if s in outcome), None)
        if worst:
            return worst
    return SUCCESS if all(s == SUCCESS for s in mapped) else SKIPPED


def judge(parents: Iterable[str], states: Mapping[str, str | None]) -> Verdict:
    """Cosmos LOCAL's all_success rule: any parent failed for good → FAILED, skipped → SKIPPED, all success → run."""
    waiting = False
    for task_id in sorted(parents):
        state = states.get(task_id)
        if state in _FAILED_STATES:
            return Verdict(FAILED, task_id, state)
        if state in _SKIPPED_STATES:
            return Verdict(SKIPPED, task_id, state)
        waiting = waiting or state != SUCCESS
    return Verdict(WAIT) if waiting else Verdict(SUCCESS)


def _name(state: Any) -> str:
    return str(getattr(state, "value", state)).lower()


async def supervisor_states(dag_id: str, run_id: str, task_ids: list[str]) -> Mapping[str, Any]:
    """One ``GetTaskStates`` through the triggerer's supervisor: the states of ``task_ids`` in this run."""
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.comms import GetTaskStates

    comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
    if comms is None or not hasattr(comms, "asend"):
        raise RuntimeError("no triggerer supervisor to ask for task states (this trigger runs outside a triggerer)")
    result = await comms.asend(GetTaskStates(dag_id=dag_id, task_ids=task_ids, run_ids=[run_id]))
    return result.task_states.get(run_id) or {}


@dataclass(eq=False)  # held in sets: identity, not field equality
class _Waiter:
    parents: frozenset[str]
    future: asyncio.Future[Verdict]
    known: dict[str, str | None] = field(default_factory=dict)

    def update(self, states: Mapping[str, str | None]) -> None:
        self.known.update({k: v for k, v in states.items() if k in self.parents})
        verdict = judge(self.parents, self.known)
        if verdict.outcome != WAIT and not self.future.done():
            self.future.set_result(verdict)


class _Board:
    """One DAG run's waiting triggers in this process, and the loop that checks their parents' states."""

    def __init__(self, key: tuple[str, str], fetch: StateFetcher, interval: float) -> None:
        self.key = key
        self.fetch = fetch
        self.interval = interval
        self.waiters: set[_Waiter] = set()
        self.arrived = asyncio.Event()
        self.checks = 0  # state checks made, for tests and logs
        self.loop_task: asyncio.Task[None] | None = None

    def add(self, waiter: _Waiter) -> None:
        self.waiters.add(waiter)
        self.arrived.set()
        if self.loop_task is None or self.loop_task.done():
            self.loop_task = asyncio.ensure_future(self._check_loop())

    async def _check_loop(self) -> None:
        while self.waiters:
            try:
                await asyncio.wait_for(self.arrived.wait(), timeout=self.interval)
                await asyncio.sleep(_COALESCE_S)
            except asyncio.TimeoutError:
                pass
            self.arrived.clear()
            self.waiters = {w for w in self.waiters if not w.future.done()}
            wanted = sorted({p for w in self.waiters for p in w.parents if w.known.get(p) != SUCCESS})
            if not wanted:
                continue
            try:
                answer = await self.fetch(*self.key, wanted)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the supervisor may be busy or restarting: try again next interval
                log.warning("could not read the states of %d parent task(s) of run %s: %s", len(wanted),
                            self.key[1], exc)
                continue
            self.checks += 1
            states = {task_id: parent_state(answer, task_id) for task_id in wanted}
            for waiter in list(self.waiters):
                waiter.update(states)
        if _BOARDS.get(self.key) is self:
            del _BOARDS[self.key]


_BOARDS: dict[tuple[str, str], _Board] = {}


async def wait_for_parents(dag_id: str, run_id: str, parents: Iterable[str], *, interval: float,
                           fetch: StateFetcher = supervisor_states) -> Verdict:
    """Return once every parent succeeded (SUCCESS) or one failed / was skipped for good (FAILED / SKIPPED)."""
    wanted = frozenset(parents)
    if not wanted:
        return Verdict(SUCCESS)
    key = (dag_id, run_id)
    board = _BOARDS.get(key)
    if board is None:
        board = _BOARDS[key] = _Board(key, fetch, interval)
    waiter = _Waiter(wanted, asyncio.get_running_loop().create_future())
    board.add(waiter)
    try:
        return await waiter.future
    finally:
        board.waiters.discard(waiter)


def publish(dag_id: str, run_id: str, task_id: str, outcome: str) -> None:
    """A trigger of this process ended ``task_id`` for good (``success``, ``failed``): wake its children now."""
    board = _BOARDS.get((dag_id, run_id))
    if board is None:
        return
    for waiter in list(board.waiters):
        if task_id in waiter.parents:
            waiter.update({task_id: outcome})


def board_checks(dag_id: str, run_id: str) -> int:
    """How many batched state checks the run's board has made so far (0 when none is open)."""
    board = _BOARDS.get((dag_id, run_id))
    return board.checks if board else 0


@dataclass
class _Cap:
    semaphore: asyncio.Semaphore
    limit: int
    users: int = 0


_CAPS: dict[tuple[str, ...], _Cap] = {}


@asynccontextmanager
async def job_slot(key: tuple[str, ...], limit: int | None) -> AsyncIterator[None]:
    """Hold one of ``limit`` slots shared by this process's triggers with the same ``key`` (None: no cap).

    dbt's ``threads``: at most that many nodes of one run at once. The cap is per triggerer process.
    """
    if not limit or limit < 1:
        yield
        return
    cap = _CAPS.get(key)
    if cap is None:
        cap = _CAPS[key] = _Cap(asyncio.Semaphore(limit), limit)
    cap.users += 1
    try:
        async with cap.semaphore:
            yield
    finally:
        cap.users -= 1
        if cap.users == 0 and _CAPS.get(key) is cap:
            del _CAPS[key]
