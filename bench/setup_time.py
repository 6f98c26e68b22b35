"""Setup-task time: our compile-and-upload (capture_project + RunUpload) vs plain ``dbt compile --threads 8``.

Both run against the BigQuery emulator in a fresh interpreter per sample (wall time includes imports and dbt's
parse). Our capture keeps dbt's partial-parse state between runs as the setup task does (``[cosmos] cache_dir``);
``dbt compile`` is measured both ways: a fresh ``--target-path`` per sample (full parse) and one target path kept
across samples (partial parse, as in a user's project directory). The warm-up sample leaves both states in place.
The remote path is a GCS emulator (gs://: gcp-storage-emulator, or fake-gcs-server in
``ours_setup_fake_gcs_server``) or a local directory (file://).
Our figure also reports its capture and upload stages as the setup task logs them: uploads overlap the capture
(each node's files go up as dbt finishes it; ``upload_s`` is what is left after dbt ends, the index last) and the
``_sequential`` variants upload only after the capture, as before; ``ours_setup_venv_file`` captures with dbt in a
virtualenv built from ``async_py_requirements`` (the warm-up sample builds it, the timed ones find it cached).
Each sample deletes its run's files afterwards,
untimed, as the teardown task does, so the bucket does not fill up across samples. Peak memory: each process's RSS
high-water mark (``ru_maxrss``: the capture process's own ``getrusage(RUSAGE_SELF)``; ``dbt compile``'s from
``os.wait4``), dbt in-process included.
``peak_rss_tree_mb`` adds the capture process's and its largest child's (a helper of a split capture, or the
virtualenv's dbt), an upper bound of what they hold at once.
Note the work differs: the capture runs ``dbt build`` with one thread per dbt process (it records each node's
statements, tests included), in as many processes as the setup task would use (``[cosmos] capture_processes``;
``ours_setup_file_one_process``: one); ``dbt compile`` renders SQL only, with the profile's 8 threads.
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
from bench.synthetic import parse, write_project

OURS = """
import json, resource, sys, time
# What a worker has loaded before the setup task's execute: Airflow, and the DAG file's imports (with a manifest
# they load no dbt). The setup task's own time starts here; the process's wall time also counts this.
import airflow.sdk, cosmos_async
ready_at = time.time()
from pathlib import Path
from cosmos_async.config import ProfileConfig
from cosmos_async.dbt.capture import capture_project
from cosmos_async.dbt.partial_parse import state_file
from cosmos_async.profiles import resolve_target
from cosmos_async.remote import RemoteTarget, RunUpload, delete_run
project, url, conn, run_id, overlap, processes = sys.argv[1:7]
from cosmos_async.config import capture_processes
processes = int(processes) or capture_processes()  # 0: as the setup task decides
t0 = time.perf_counter()
profile = ProfileConfig(profile_name="synthetic", target_name="dev",
                        profiles_yml_filepath=str(Path(project) / "profiles.yml"))
target = RemoteTarget.from_config(url, conn or None)
wanted = set(json.loads((Path(project) / "node_ids.json").read_text()))  # as the DAG's render hands the setup
with RunUpload(target, "bench", run_id, wanted) as upload:
    kept = state_file(Path(project), profile, resolve_target(profile))  # as the setup task keys it
CAPTURE
    t1 = time.perf_counter()
    index = upload.finish(capture)
t2 = time.perf_counter()
ended_at = time.time()  # the setup's end: what follows is not timed
# KiB on Linux: the RSS high-water mark of this process, or of the dbt Python it ran (the virtualenv path).
peaks = [resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
peak = max(peaks)
delete_run(target, "bench", run_id)  # as teardown does: the next sample's bucket is as empty
print(json.dumps({"ended_at": ended_at, "in_task_s": ended_at - ready_at, "capture_s": t1 - t0, "upload_s": t2 - t1,
                  "files": len(index["nodes"]),
                  "early_files": upload.early, "peak_rss_mb": round(peak / 1024, 1),
                  "peak_rss_tree_mb": round(sum(peaks) / 1024, 1),
                  "fallbacks": sum(1 for e in index["nodes"].values() if e["fallback"])}))
"""
# How the setup task captures: dbt in this process (each node's files go up as dbt finishes it, unless
# ``overlap`` is 0) or dbt in a virtualenv built from async_py_requirements, found in the cache as a setup task
# after the first finds it (the warm-up sample builds it; the capture's nodes come back at its end).
IN_PROCESS = """    capture = capture_project(Path(project), profile, partial_parse=kept, processes=processes,
                              on_node_captured=upload.node_captured if overlap == "1" else None)"""
IN_VENV = """    from importlib import metadata
    from cosmos_async.dbt.capture_cli import capture_in_python
    from cosmos_async.dbt.venv import ensure_venv, venv_python
    wanted_dbt = [f"{name}=={metadata.version(name)}" for name in ("dbt-bigquery", "dbt-core")]
    capture = capture_in_python(venv_python(ensure_venv(wanted_dbt)), Path(project), profile, partial_parse=kept,
                                processes=processes)"""


# What ``python -m bench`` measures (the before/after ``_sequential`` variants are for the overlap's own report).
DEFAULT = frozenset({"dbt_compile", "dbt_compile_partial_parse", "ours_setup_gcs", "ours_setup_fake_gcs_server",
                     "ours_setup_file", "ours_setup_file_one_process"})


def _env(bq_endpoint: str, gcs_endpoint: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update({"BIGQUERY_API_ENDPOINT": bq_endpoint, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False"})
    if gcs_endpoint:
        env["AIRFLOW_CONN_BENCH_GCS"] = json.dumps({"conn_type": "google_cloud_platform", "extra": {
            "project": "demo-proj", "anonymous": True, "storage_api_endpoint": gcs_endpoint}})
    return env


def ours_sample(project: Path, url: str, conn: str, env: dict[str, str], run: int, overlap: bool = True,
                venv: bool = False, processes: int = 0) -> dict:
    started_at = time.time()  # wall clock: the child reports when its setup ended, before its untimed cleanup
    script = OURS.replace("CAPTURE", IN_VENV if venv else IN_PROCESS)
    out = subprocess.run([sys.executable, "-c", script, str(project), url, conn, f"run_{run}_{time.time_ns()}",
                          "1" if overlap else "0", str(processes)],
                         capture_output=True, text=True, env=env, timeout=900)
    if out.returncode:
        raise RuntimeError(out.stderr[-1500:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"wall_s": result.pop("ended_at") - started_at, **result}


def _write_node_ids(project: Path) -> None:
    """The ids a DAG's setup task is handed (models, seeds, tests), from a real ``dbt parse`` (untimed)."""
    manifest = json.loads(parse(project).read_text())
    ids = sorted(k for k, v in manifest["nodes"].items() if v["resource_type"] in ("model", "seed", "test"))
    (project / "node_ids.json").write_text(json.dumps(ids))


def compile_sample(project: Path, env: dict[str, str], kept_target: Path | None = None) -> dict:
    """One ``dbt compile``: in a fresh target path, or in ``kept_target`` (its partial-parse state reused)."""
    dbt = Path(sys.executable).with_name("dbt")
    with tempfile.TemporaryDirectory(prefix="bench-compile-") as fresh:
        target = str(kept_target or fresh)
        with tempfile.TemporaryFile("w+") as output:
            t0 = time.perf_counter()
            process = subprocess.Popen([str(dbt), "compile", "--threads", "8", "--project-dir", str(project),
                                        "--profiles-dir", str(project), "--target-path", target, "--log-path",
                                        target, "--quiet"], stdout=output, stderr=subprocess.STDOUT, env=env)
            # wait4: this one child's resource usage, its RSS high-water mark among it (KiB on Linux).
            _, status, usage = os.wait4(process.pid, 0)
            wall = time.perf_counter() - t0
            process.returncode = os.waitstatus_to_exitcode(status)
            output.seek(0)
            if process.returncode:
                raise RuntimeError(output.read()[-1500:])
    return {"wall_s": wall, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def _summary(samples: list[dict]) -> dict:
    out = {"runs": len(samples), "median_s": round(statistics.median(s["wall_s"] for s in samples), 3),
           "samples_s": [round(s["wall_s"], 3) for s in samples]}
    for key in ("in_task_s", "capture_s", "upload_s"):
        if key in samples[0]:
            out[f"median_{key}"] = round(statistics.median(s[key] for s in samples), 3)
    for key in ("peak_rss_mb", "peak_rss_tree_mb"):
        if key in samples[0]:
            out[f"max_{key}"] = max(s[key] for s in samples)
    for key in ("files", "early_files", "fallbacks"):
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


def run(models: list[int], runs: int, workdir: Path, warmup: bool = True,
        variants: set[str] | None = None) -> list[dict]:
    """One row per project size; ``variants`` limits what is measured (None: all)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.support.emulators import start_bigquery

    workdir.mkdir(parents=True, exist_ok=True)
    bq = start_bigquery(workdir / "bq")
    rows = []
    try:
        env = {**_env(bq.endpoint, None), "AIRFLOW__COSMOS__CACHE_DIR": str(workdir / "cache")}
        file_url = f"file://{workdir}/remote"
        for n in models:
            project = write_project(workdir / f"project_{n}", n)
            _write_node_ids(project)
            row: dict = {"models": n, "load_average_before": [round(x, 2) for x in os.getloadavg()],
                         "variants": {}}
            measures = {
                "dbt_compile": lambda i, p=project: compile_sample(p, env),
                "dbt_compile_partial_parse": lambda i, p=project, t=workdir / f"compile_target_{n}": compile_sample(
                    p, env, t),
                "ours_setup_gcs_sequential": lambda i, p=project: _gcs_sample(p, workdir, env, i, False),
                "ours_setup_gcs": lambda i, p=project: _gcs_sample(p, workdir, env, i),
                "ours_setup_fake_gcs_server": lambda i, p=project: _gcs_sample(p, workdir, env, i,
                                                                               fake_gcs_server=True),
                "ours_setup_file_sequential": lambda i, p=project: ours_sample(p, file_url, "", env, i, False),
                "ours_setup_file": lambda i, p=project: ours_sample(p, file_url, "", env, i),
                "ours_setup_file_one_process": lambda i, p=project: ours_sample(p, file_url, "", env, i, processes=1),
                "ours_setup_venv_file": lambda i, p=project: ours_sample(p, file_url, "", env, i, venv=True),
            }
            for name, measure in measures.items():
                if variants is None or name in variants:
                    row["variants"][name] = _measure(measure, runs, warmup)
            row["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
            for ref in ("dbt_compile", "dbt_compile_partial_parse"):
                base = row["variants"].get(ref, {}).get("median_s")
                row[f"ratio_vs_{ref}"] = {k: round(v["median_s"] / base, 2) for k, v in row["variants"].items()
                                          if base and "median_s" in v and k.startswith("ours_")}
                # The setup task's own time (Airflow already loaded, as on a worker) against the whole dbt process.
                row[f"in_task_ratio_vs_{ref}"] = {k: round(v["median_in_task_s"] / base, 2)
                                                  for k, v in row["variants"].items()
                                                  if base and "median_in_task_s" in v}
            rows.append(row)
            for name, v in row["variants"].items():
                shown = (f"{v['median_s']:.2f}s (in task {v.get('median_in_task_s', '-')}s, capture "
                         f"{v.get('median_capture_s', '-')}s, upload {v.get('median_upload_s', '-')}s)"
                         if "median_s" in v else f"ERROR {v['error'][-200:]}")
                print(f"setup {n:>5} models  {name:18} {shown}", flush=True)
    finally:
        bq.stop()
    return rows


def _gcs_sample(project: Path, workdir: Path, env: dict[str, str], run: int, overlap: bool = True,
                fake_gcs_server: bool = False) -> dict:
    """One setup sample against a GCS emulator started for it (not timed): gcp-storage-emulator, or with
    ``fake_gcs_server`` fake-gcs-server. The first rewrites the metadata of every object it ever held, deleted
    ones included, on each insert: shared across samples, each sample would be slower than the last for the
    emulator's sake alone."""
    from tests.support.emulators import start_fake_gcs, start_gcs

    gcs = (start_fake_gcs if fake_gcs_server else start_gcs)(workdir / f"gcs_{time.time_ns()}")
    try:
        sample_env = {**env, **_env(env["BIGQUERY_API_ENDPOINT"], gcs.endpoint)}  # the bucket's connection
        return ours_sample(project, f"gs://{gcs.extra['bucket']}/bench", "bench_gcs", sample_env, run, overlap)
    finally:
        gcs.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cosmos-async-bench/setup"))
    parser.add_argument("--variants", nargs="+", help="measure only these (e.g. dbt_compile ours_setup_file)")
    parser.add_argument("--name", default="setup", help="results file name part")
    parser.add_argument("--no-warmup", action="store_true", help="no untimed first sample (both parse in full)")
    args = parser.parse_args()
    rows = run(args.models, args.runs, args.workdir, warmup=not args.no_warmup,
               variants=set(args.variants) if args.variants else None)
    print("results:", write_results(args.name, rows))


if __name__ == "__main__":
    main()
