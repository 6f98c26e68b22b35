"""The triggerer-side parent wait: one batched state check per run, waking by a parent of the same process."""

from __future__ import annotations

import asyncio

from cosmos_async_triggers import parents as pw


class RecordedStates:
    """Stands in for the supervisor's GetTaskStates (a fault-free state source) and records each request."""

    def __init__(self, states: dict[str, str]) -> None:
        self.states = states
        self.requests: list[list[str]] = []

    async def __call__(self, dag_id: str, run_id: str, task_ids: list[str]) -> dict[str, str]:
        self.requests.append(task_ids)
        return {t: self.states[t] for t in task_ids if t in self.states}


def test_many_waiters_share_one_state_check_per_interval() -> None:
    states = RecordedStates({"a": "running", "b": "success", "c": "up_for_retry"})

    async def scenario() -> list[pw.Verdict]:
        waits = [asyncio.ensure_future(pw.wait_for_parents("d", "r", parents, interval=0.2, fetch=states))
                 for parents in (["a"], ["a", "b"], ["c"], ["b"])]
        await asyncio.sleep(0.5)
        states.states.update(a="success", c="failed")
        return await asyncio.wait_for(asyncio.gather(*waits), 2)

    verdicts = asyncio.run(scenario())
    assert [v.outcome for v in verdicts] == ["success", "success", "failed", "success"]
    assert verdicts[2].reason == "upstream task 'c' ended failed"
    # One request per round for the union of what is still awaited, not one per waiting task.
    assert states.requests[0] == ["a", "b", "c"]
    assert 2 <= len(states.requests) <= 5, states.requests


def test_a_publishing_parent_wakes_its_children_at_once() -> None:
    states = RecordedStates({"p": "running"})

    async def scenario() -> float:
        child = asyncio.ensure_future(pw.wait_for_parents("d", "r2", ["p"], interval=30, fetch=states))
        await asyncio.sleep(0.1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        pw.publish("d", "r2", "p", pw.SUCCESS)
        assert (await asyncio.wait_for(child, 1)).outcome == pw.SUCCESS
        return loop.time() - started

    assert asyncio.run(scenario()) < 0.05


def test_judge_follows_all_success() -> None:
    assert pw.judge(["a", "b"], {"a": "success", "b": "skipped"}).outcome == pw.SKIPPED
    assert pw.judge(["a"], {"a": "upstream_failed"}).outcome == pw.FAILED
    assert pw.judge(["a"], {"a": "up_for_retry"}).outcome == pw.WAIT
    assert pw.judge(["a"], {}).outcome == pw.WAIT
    assert pw.parent_state({"m_0": "success", "m_1": "running"}, "m") == "running"


def test_job_slots_cap_one_run() -> None:
    async def scenario() -> int:
        peak = running = 0

        async def job() -> None:
            nonlocal peak, running
            async with pw.job_slot(("d", "r", ""), 2):
                running += 1
                peak = max(peak, running)
                await asyncio.sleep(0.02)
                running -= 1

        await asyncio.gather(*(job() for _ in range(6)))
        return peak

    assert asyncio.run(scenario()) == 2
