"""One triggerer-like process: N BigQuery job waits as concurrent ``trigger.run()`` coroutines in one event loop.

Run by bench/triggerer.py with the environment under test's Python (stdlib-only imports at module level, so the
Cosmos bench environment can run it too). Prints one JSON line: wall, CPU and RSS of the waits alone (the
setup before the clock — uploading our run indexes, inserting the provider's jobs — is excluded).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import resource
import time
from typing import Any

SQL = "select 1 as x"
NODES_PER_RUN = 100  # one DAG run's index holds this many nodes, as a 100-model DAG's would


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _watch_rss(peak: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_mb())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


async def _drive(triggers: list[Any]) -> tuple[float, float, float, list[str]]:
    """Run every trigger's ``run()`` to its first event, concurrently; wall, CPU, peak RSS, event statuses."""
    async def first_event(trigger: Any) -> str:
        async for event in trigger.run():
            payload = event.payload if isinstance(event.payload, dict) else {}
            return str(payload.get("status", type(event).__name__))
        return "no event"

    gc.collect()
    peak = [rss_mb()]
    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch_rss(peak, stop))
    cpu0, t0 = cpu_s(), time.perf_counter()
    statuses = await asyncio.gather(*(first_event(t) for t in triggers), return_exceptions=True)
    wall, cpu = time.perf_counter() - t0, cpu_s() - cpu0
    stop.set()
    await watcher
    return wall, cpu, peak[0], [s if isinstance(s, str) else f"{type(s).__name__}: {s}" for s in statuses]


async def ours(n: int, remote: str, poll: float) -> dict[str, Any]:
    from cosmos_async_triggers import rest
    from cosmos_async_triggers.bigquery import BigQueryNodeTrigger

    from cosmos_async.dbt.captured import Capture, NodeCapture
    from cosmos_async.remote import RemoteTarget, upload_capture

    target = RemoteTarget.from_config(remote)
    stamp = time.time_ns()
    triggers = []
    for start in range(0, n, NODES_PER_RUN):
        run_id = f"bench_{stamp}_{start}"
        ids = [f"model.synthetic.m{i:05d}" for i in range(start, min(n, start + NODES_PER_RUN))]
        upload_capture(target, "bench", run_id, Capture({i: NodeCapture([SQL]) for i in ids}, NodeCapture(),
                                                        NodeCapture()), set(ids))
        triggers += [BigQueryNodeTrigger(
            nodes=[{"id": i, "kind": "model", "name": i.rsplit(".", 1)[-1]}], gcp_conn_id="bench_gcp",
            storage_conn_id=None, remote_target_path=remote, project="demo-proj", location="US",
            poll_interval=poll, end_task=True,
            run={"dag_id": "bench", "run_id": run_id, "task_id": i.rsplit(".", 1)[-1], "map_index": -1})
            for i in ids]
    base = rss_mb()
    try:
        wall, cpu, peak, statuses = await _drive(triggers)
    finally:
        await rest.close_session()
    return _result(n, wall, cpu, base, peak, statuses)


async def google(n: int, endpoint: str, poll: float) -> dict[str, Any]:
    import aiohttp
    from airflow.providers.google.cloud.triggers.bigquery import BigQueryInsertJobTrigger

    stamp = time.time_ns()
    job_ids = [f"bench_{stamp}_{i}" for i in range(n)]
    # The provider inserts the job on a worker (BigQueryInsertJobOperator.execute) and defers only the wait:
    # insert here, before the clock.
    async with aiohttp.ClientSession() as session:
        sem = asyncio.Semaphore(50)

        async def insert(job_id: str) -> None:
            body = {"jobReference": {"projectId": "demo-proj", "jobId": job_id, "location": "US"},
                    "configuration": {"query": {"query": SQL, "useLegacySql": False}}}
            async with sem, session.post(f"{endpoint}/bigquery/v2/projects/demo-proj/jobs", json=body) as resp:
                resp.raise_for_status()

        await asyncio.gather(*(insert(j) for j in job_ids))
    triggers = [BigQueryInsertJobTrigger(conn_id="bench_gcp", job_id=j, project_id="demo-proj", location="US",
                                         poll_interval=poll) for j in job_ids]
    base = rss_mb()
    wall, cpu, peak, statuses = await _drive(triggers)
    return _result(n, wall, cpu, base, peak, statuses)


def _result(n: int, wall: float, cpu: float, base: float, peak: float, statuses: list[str]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s[:120]] = counts.get(s[:120], 0) + 1
    return {"n": n, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "cpu_s_per_1000": round(cpu * 1000 / n, 2),
            "rss_before_mb": round(base, 1), "peak_rss_mb": round(peak, 1),
            "rss_mb_per_1000": round((peak - base) * 1000 / n, 1), "events": counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["ours", "google"])
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--remote", default="")
    parser.add_argument("--endpoint", default="")
    parser.add_argument("--poll", type=float, required=True)
    args = parser.parse_args()
    coro = ours(args.n, args.remote, args.poll) if args.kind == "ours" else google(args.n, args.endpoint, args.poll)
    print(json.dumps(asyncio.run(coro)))


if __name__ == "__main__":
    main()
