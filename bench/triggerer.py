"""Triggerer capacity: N concurrent BigQuery job waits in ONE asyncio process, like one triggerer.

Each trigger's ``run()`` is driven directly (as the triggerer does) against a latency server whose job latency
we control: tests/support/bq_lifecycle_proxy.py in front of the BigQuery emulator, holding every job RUNNING for
``hold`` seconds (BigQuery's own latency is not measured here). Reported per variant: wall time vs the hold,
CPU seconds and RSS growth per 1000 waits (RSS: peak during the waits minus the process's RSS just before).

* ours: cosmos_async_triggers.BigQueryNodeTrigger — reads the run's index + script from file://, inserts the job,
  polls (default poll_interval 2 s, backoff x1.25 to 8 s), one shared aiohttp session per loop.
* google: apache-airflow-providers-google's BigQueryInsertJobTrigger, in bench/.venv-cosmos — waits only (its
  operator inserts on a worker; the jobs are inserted before the clock), its default poll_interval 4 s.
Both authenticate with a service-account key against a local OAuth token endpoint (tests/support/credentials.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench import envs
from bench.results import write_results

ROOT = Path(__file__).resolve().parent.parent
COSMOS_PYTHON = ROOT / "bench" / ".venv-cosmos" / "bin" / "python"
POLL = {"ours": 2.0, "google": 4.0}  # each trigger's own default


def _post(url: str, payload: dict) -> None:
    req = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=30).read()


class Services:
    """BigQuery emulator, the latency server (lifecycle proxy, its own process) and an OAuth token endpoint."""

    def __init__(self, workdir: Path) -> None:
        sys.path.insert(0, str(ROOT))
        from tests.support.credentials import TokenEndpoint, service_account_key
        from tests.support.emulators import free_port, start_bigquery

        self.bq = start_bigquery(workdir / "bq")
        self.tokens = TokenEndpoint()
        self.key = service_account_key(self.tokens.url)
        port = free_port()
        self.proxy_url = f"http://127.0.0.1:{port}"
        self.proxy_log = (workdir / "latency-server.log").open("wb")
        self.proxy = subprocess.Popen([sys.executable, "-m", "tests.support.bq_lifecycle_proxy", "--upstream",
                                       self.bq.endpoint, "--port", str(port)], cwd=ROOT, stdout=self.proxy_log,
                                      stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.proxy_url}/_proxy/stats", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or self.proxy.poll() is not None:
                    raise RuntimeError("the latency server did not start") from None
                time.sleep(0.2)

    def hold(self, seconds: float) -> None:
        _post(f"{self.proxy_url}/_proxy/reset", {})
        _post(f"{self.proxy_url}/_proxy/hold", {"seconds": seconds})

    def env(self) -> dict[str, str]:
        conn = {"conn_type": "google_cloud_platform",
                "extra": {"project": "demo-proj", "keyfile_dict": json.dumps(self.key),
                          "bigquery_api_endpoint": self.proxy_url}}
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.update({"AIRFLOW_CONN_BENCH_GCP": json.dumps(conn), "BIGQUERY_EMULATOR_HOST": self.proxy_url,
                    "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "PYTHONPATH": envs.PYTHONPATH})
        return env

    def stop(self) -> None:
        self.proxy.terminate()
        self.proxy.wait(10)
        self.proxy_log.close()
        self.tokens.stop()
        self.bq.stop()


def measure(services: Services, kind: str, n: int, hold: float, workdir: Path, timeout: float) -> dict:
    python = sys.executable if kind == "ours" else str(COSMOS_PYTHON)
    if not Path(python).exists():
        return {"error": f"{python} missing: build it with `python -m bench.envs`"}
    services.hold(hold)
    cmd = [python, "-m", "bench.trigger_worker", kind, "--n", str(n), "--poll", str(POLL[kind]),
           "--remote", f"file://{workdir}/remote", "--endpoint", services.proxy_url]
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=services.env(), timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout:.0f}s (hold {hold}s)"}
    if out.returncode:
        return {"error": out.stderr.strip()[-1500:]}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_over_hold"] = round(result["wall_s"] / hold, 2) if hold else None
    return result


def run(sizes: list[int], hold: float, workdir: Path, google_sizes: list[int] | None = None) -> list[dict]:
    workdir.mkdir(parents=True, exist_ok=True)
    services = Services(workdir)
    rows = []
    try:
        for kind, ns in (("ours", sizes), ("google", sizes if google_sizes is None else google_sizes)):
            for n in ns:
                result = measure(services, kind, n, hold, workdir, timeout=max(300.0, hold * 10 + n * 0.1))
                row = {"trigger": kind, "n": n, "hold_s": hold, "poll_interval_s": POLL[kind], **result}
                rows.append(row)
                shown = (f"wall {row['wall_s']}s ({row['wall_over_hold']}x hold)  cpu {row['cpu_s']}s "
                         f"({row['cpu_s_per_1000']} s/1000)  rss +{row['rss_mb_per_1000']} MB/1000  "
                         f"events {row['events']}" if "wall_s" in row else f"ERROR {row['error'][-300:]}")
                print(f"triggerer {kind:6} n={n:>5} hold={hold}s  {shown}", flush=True)
    finally:
        services.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--google-n", type=int, nargs="*", default=None)
    parser.add_argument("--hold", type=float, default=30.0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cosmos-async-bench/triggerer"))
    args = parser.parse_args()
    rows = run(args.n, args.hold, args.workdir, args.google_n)
    print("results:", write_results("triggerer", rows))


if __name__ == "__main__":
    main()
