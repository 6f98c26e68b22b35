"""Setup-task time: our compile-and-upload (capture_project + upload_capture) vs plain ``dbt compile``.

Both run against the BigQuery emulator in a fresh interpreter per sample (wall time includes imports and dbt's
parse). Our capture keeps dbt's partial-parse state between runs as the setup task does (``[cosmos] cache_dir``);
``dbt compile`` is measured both ways: a fresh ``--target-path`` per sample (full parse) and one target path kept
across samples (partial parse, as in a user's project directory). The warm-up sample leaves both states in place.
The remote path is the GCS emulator (gs://) or a local directory (file://).
Our figure also reports its capture and upload stages as the setup task logs them.
Note the work differs: the capture runs ``dbt build`` with one thread (it records each node's statements, tests
included); ``dbt compile`` renders SQL only, with the profile's 8 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.results import write_results
from bench.synthetic import write_project

OURS = """
import json, sys, time
from pathlib import Path
from cosmos_async.capture import capture_project
from cosmos_async.config import ProfileConfig
from cosmos_async.partial_parse import state_file
from cosmos_async.remote import RemoteTarget, upload_capture
project, url, conn, run_id = sys.argv[1:5]
t0 = time.perf_counter()
profile = ProfileConfig(profile_name="synthetic", target_name="dev",
                        profiles_yml_filepath=str(Path(project) / "profiles.yml"))
capture = capture_project(Path(project), profile, partial_parse=state_file(Path(project), profile))
t1 = time.perf_counter()
wanted = {k for k in capture.nodes if k.startswith(("model.", "seed.", "test."))}
index = upload_capture(RemoteTarget.from_config(url, conn or None), "bench", run_id, capture, wanted)
t2 = time.perf_counter()
print(json.dumps({"capture_s": t1 - t0, "upload_s": t2 - t1, "files": len(index["nodes"]),
                  "fallbacks": sum(1 for e in index["nodes"].values() if e["fallback"])}))
"""


def _env(bq_endpoint: str, gcs_endpoint: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update({"BIGQUERY_API_ENDPOINT": bq_endpoint, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False"})
    if gcs_endpoint:
        env["AIRFLOW_CONN_BENCH_GCS"] = json.dumps({"conn_type": "google_cloud_platform", "extra": {
            "project": "demo-proj", "anonymous": True, "storage_api_endpoint": gcs_endpoint}})
    return env


def ours_sample(project: Path, url: str, conn: str, env: dict[str, str], run: int) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", OURS, str(project), url, conn, f"run_{run}_{time.time_ns()}"],
                         capture_output=True, text=True, env=env, timeout=900)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise RuntimeError(out.stderr[-1500:])
    return {"wall_s": wall, **json.loads(out.stdout.strip().splitlines()[-1])}


def compile_sample(project: Path, env: dict[str, str], kept_target: Path | None = None) -> dict:
    """One ``dbt compile``: in a fresh target path, or in ``kept_target`` (its partial-parse state reused)."""
    dbt = Path(sys.executable).with_name("dbt")
    with tempfile.TemporaryDirectory(prefix="bench-compile-") as fresh:
        target = str(kept_target or fresh)
        t0 = time.perf_counter()
        out = subprocess.run([str(dbt), "compile", "--project-dir", str(project), "--profiles-dir", str(project),
                              "--target-path", target, "--log-path", target, "--quiet"],
                             capture_output=True, text=True, env=env, timeout=900)
        wall = time.perf_counter() - t0
    if out.returncode:
        raise RuntimeError((out.stdout + out.stderr)[-1500:])
    return {"wall_s": wall}


def _summary(samples: list[dict]) -> dict:
    out = {"runs": len(samples), "median_s": round(statistics.median(s["wall_s"] for s in samples), 3),
           "samples_s": [round(s["wall_s"], 3) for s in samples]}
    for key in ("capture_s", "upload_s"):
        if key in samples[0]:
            out[f"median_{key}"] = round(statistics.median(s[key] for s in samples), 3)
    for key in ("files", "fallbacks"):
        if key in samples[0]:
            out[key] = samples[0][key]
    return out


def _measure(fn, runs: int, warmup: bool = True) -> dict:
    try:
        if warmup:
            fn(-1)  # warm-up: bytecode, emulator caches
        return _summary([fn(i) for i in range(runs)])
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)[-1500:]}


def run(models: list[int], runs: int, workdir: Path, warmup: bool = True) -> list[dict]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.support.emulators import start_bigquery, start_gcs

    workdir.mkdir(parents=True, exist_ok=True)
    bq = start_bigquery(workdir / "bq")
    gcs = start_gcs(workdir / "gcs")
    rows = []
    try:
        env = {**_env(bq.endpoint, gcs.endpoint), "AIRFLOW__COSMOS__CACHE_DIR": str(workdir / "cache")}
        bucket = gcs.extra["bucket"]
        for n in models:
            project = write_project(workdir / f"project_{n}", n)
            row: dict = {"models": n, "variants": {}}
            row["variants"]["dbt_compile"] = _measure(lambda i, p=project: compile_sample(p, env), runs, warmup)
            row["variants"]["dbt_compile_partial_parse"] = _measure(
                lambda i, p=project, t=workdir / f"compile_target_{n}": compile_sample(p, env, t), runs, warmup)
            row["variants"]["ours_setup_gcs"] = _measure(
                lambda i, p=project: ours_sample(p, f"gs://{bucket}/bench", "bench_gcs", env, i), runs, warmup)
            row["variants"]["ours_setup_file"] = _measure(
                lambda i, p=project: ours_sample(p, f"file://{workdir}/remote", "", env, i), runs, warmup)
            for ref in ("dbt_compile", "dbt_compile_partial_parse"):
                base = row["variants"][ref].get("median_s")
                row[f"ratio_vs_{ref}"] = {k: round(v["median_s"] / base, 2) for k, v in row["variants"].items()
                                          if base and "median_s" in v and k.startswith("ours_")}
            rows.append(row)
            for name, v in row["variants"].items():
                shown = (f"{v['median_s']:.2f}s (capture {v.get('median_capture_s', '-')}s, upload "
                         f"{v.get('median_upload_s', '-')}s)" if "median_s" in v else f"ERROR {v['error'][-200:]}")
                print(f"setup {n:>5} models  {name:18} {shown}", flush=True)
    finally:
        bq.stop()
        gcs.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cosmos-async-bench/setup"))
    args = parser.parse_args()
    rows = run(args.models, args.runs, args.workdir)
    print("results:", write_results("setup", rows))


if __name__ == "__main__":
    main()
