"""DAG-file parse time: cosmos-async vs astronomer-cosmos vs the floor (the same task graph of EmptyOperators).

Every sample is a fresh interpreter (``python -c PROBE dag_file``). Bytecode: each DAG file is run once before
the timed samples with PYTHONDONTWRITEBYTECODE unset, so the libraries' .pyc files exist (compiled) and the
samples measure warm-.pyc imports; the DAG file itself is compiled each time (runpy), as the dag-processor does.
Airflow's SDK and EmptyOperator are imported before the clock starts in every variant, so the figures compare
what the DAG file costs; peak RSS is the whole probe process's (Airflow included).

Variants with a manifest (LoadMode.DBT_MANIFEST): floor, ours LOCAL, ours AIRFLOW_ASYNC, Cosmos LOCAL, Cosmos
AIRFLOW_ASYNC. Without a manifest (dbt ls): ours cold (empty cache dir each sample), ours cached, Cosmos DBT_LS
(its dbt-ls cache disabled: Cosmos keeps that cache in Airflow Variables, i.e. the metadata DB).
Cosmos runs in bench/.venv-cosmos (bench/envs.py) with the same Airflow and dbt versions as our lock.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from bench.results import write_results
from bench.synthetic import parse, write_project

OURS = """
from cosmos_async import DbtDag, ExecutionConfig, ExecutionMode, ProfileConfig, ProjectConfig, RenderConfig
from cosmos_async import LoadMode, TestBehavior
dag = DbtDag(
    dag_id="ours", schedule=None,
    project_config=ProjectConfig(manifest_path={manifest!r}, dbt_project_path={project!r}),
    profile_config=ProfileConfig(profile_name="synthetic", target_name="dev",
                                 profiles_yml_filepath={profiles!r}),
    execution_config=ExecutionConfig(execution_mode=ExecutionMode.{mode}),
    render_config=RenderConfig(test_behavior=TestBehavior.{tests}, load_method=LoadMode.{load}),
    operator_args={{"gcp_conn_id": "bench_gcp"}},
)
"""

COSMOS = """
from cosmos import DbtDag, ExecutionConfig, ExecutionMode, ProfileConfig, ProjectConfig, RenderConfig
from cosmos.constants import LoadMode, TestBehavior
dag = DbtDag(
    dag_id="cosmos", schedule=None,
    project_config=ProjectConfig(manifest_path={manifest!r}, project_name="synthetic",
                                 dbt_project_path={project!r}),
    profile_config={profile},
    execution_config=ExecutionConfig(execution_mode=ExecutionMode.{mode}, {execution_extra}),
    render_config=RenderConfig(test_behavior=TestBehavior.{tests}, load_method=LoadMode.{load},
                               enable_mock_profile=False),
)
"""

COSMOS_FILE_PROFILE = "ProfileConfig(profile_name='synthetic', target_name='dev', profiles_yml_filepath={profiles!r})"
COSMOS_MAPPED_PROFILE = (
    "ProfileConfig(profile_name='synthetic', target_name='dev', profile_mapping=__import__("
    "'cosmos.profiles', fromlist=['x']).GoogleCloudServiceAccountDictProfileMapping(conn_id='bench_gcp', "
    "profile_args={'project': 'demo-proj', 'dataset': 'synthetic'}))"
)
GCP_CONN = '{"conn_type": "google_cloud_platform", "extra": {"project": "demo-proj", "keyfile_dict": "{}"}}'

FLOOR = """
from airflow.sdk import DAG, TaskGroup
from airflow.providers.standard.operators.empty import EmptyOperator
PLANS = {plans!r}
with DAG(dag_id="floor", schedule=None) as dag:
    tasks, groups = {{}}, {{}}
    for key, task_id, group_id, upstream in PLANS:
        if group_id is None:
            tasks[key] = EmptyOperator(task_id=task_id)
        else:
            if group_id not in groups:
                groups[group_id] = TaskGroup(group_id=group_id)
            with groups[group_id]:
                tasks[key] = EmptyOperator(task_id=task_id)
        for up in upstream:
            tasks[up] >> tasks[key]
"""

PROBE = """
import sys, time, runpy
import airflow.sdk  # noqa: F401  (excluded from the measurement in every file)
from airflow.providers.standard.operators.empty import EmptyOperator  # noqa: F401
t0 = time.perf_counter()
ns = runpy.run_path(sys.argv[1])
elapsed = time.perf_counter() - t0
import resource
heavy = sorted(m for m in ("dbt", "google.cloud.bigquery", "gcsfs") if m in sys.modules)
print(elapsed, len(ns["dag"].task_dict), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, ",".join(heavy))
"""

MAIN_PYTHON = Path(sys.executable)
COSMOS_PYTHON = Path(__file__).resolve().parent / ".venv-cosmos" / "bin" / "python"


@dataclass
class Variant:
    name: str
    source: str
    python: Path = MAIN_PYTHON
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # dbt (for dbt ls) is found on PATH, as in a deployment: the variant's own environment's dbt first.
        self.env.setdefault("PATH", f"{self.python.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        if self.python == COSMOS_PYTHON:
            self.warmup = False
    fresh_cache: bool = False  # point AIRFLOW__COSMOS__CACHE_DIR at an empty directory before every sample
    # The bench env is installed with --compile-bytecode, so Cosmos needs no warm-up run for its .pyc.
    warmup: bool = True


def floor_plans(manifest: Path, tests: str) -> list[tuple]:
    from cosmos_async.config import TestBehavior
    from cosmos_async.plan import plan_tasks
    from cosmos_async.project.manifest import load_manifest
    from cosmos_async.project.select import select_nodes

    graph = load_manifest(manifest)
    plans = plan_tasks(graph, select_nodes(graph, [], []), TestBehavior[tests])
    return [(p.key, p.task_id, p.group_id, p.upstream) for p in plans]


def probe_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # .pyc written by the warm-up run, read by the samples
    env.update({"AIRFLOW__CORE__LOAD_EXAMPLES": "False", "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
                "AIRFLOW__COSMOS__ENABLE_CACHE_DBT_LS": "False",
                "AIRFLOW__COSMOS__REMOTE_TARGET_PATH": "file:///tmp/cosmos-async-bench/remote", **extra})
    return env


def _sample(variant: Variant, dag_file: Path) -> tuple[float, int, int, str]:
    extra = dict(variant.env)
    if variant.fresh_cache:
        extra["AIRFLOW__COSMOS__CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-dbtls-")
    out = subprocess.run([str(variant.python), "-c", PROBE, str(dag_file)], capture_output=True, text=True,
                         env=probe_env(extra), timeout=900)
    if variant.fresh_cache:
        shutil.rmtree(extra["AIRFLOW__COSMOS__CACHE_DIR"], ignore_errors=True)
    if out.returncode:
        raise RuntimeError(out.stderr.strip()[-1500:])
    elapsed, tasks, maxrss, heavy = [*out.stdout.strip().splitlines()[-1].split(" "), ""][:4]
    return float(elapsed), int(tasks), int(maxrss), heavy


def measure(variant: Variant, dag_file: Path, runs: int) -> dict:
    """Median of ``runs`` fresh interpreters after one untimed warm-up; a failure becomes the row's error."""
    if not variant.python.exists():
        return {"error": f"{variant.python} missing: build it with `python -m bench.envs`"}
    try:
        if variant.warmup:
            _sample(variant, dag_file)  # warm-up: compiles the libraries' bytecode, fills a dbt-ls cache
        samples = [_sample(variant, dag_file) for _ in range(runs)]
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)[-1500:]}
    times = [s[0] for s in samples]
    return {"median_s": round(statistics.median(times), 4), "samples_s": [round(t, 4) for t in times],
            "tasks": samples[0][1], "peak_rss_mb": round(statistics.median(s[2] for s in samples) / 1024, 1),
            "heavy_imports": samples[0][3], "runs": runs}


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def manifest_variants(workdir: Path, n: int, project: Path, manifest: Path, tests: str) -> list[tuple[Variant, Path]]:
    profiles = str(project / "profiles.yml")
    fmt = {"manifest": str(manifest), "project": str(project), "profiles": profiles, "tests": tests,
           "load": "DBT_MANIFEST"}
    out = [(Variant("floor", ""), _write(workdir / f"floor_{n}.py", FLOOR.format(plans=floor_plans(manifest, tests))))]
    for mode in ("LOCAL", "AIRFLOW_ASYNC"):
        out.append((Variant(f"ours_{mode.lower()}", ""),
                    _write(workdir / f"ours_{mode.lower()}_{n}.py", OURS.format(mode=mode, **fmt))))
    extras = {"LOCAL": "", "AIRFLOW_ASYNC": "async_py_requirements=['dbt-bigquery']"}
    for mode, extra in extras.items():
        # Cosmos's async mode takes the BigQuery connection from a profile mapping; LOCAL reads profiles.yml.
        profile = COSMOS_MAPPED_PROFILE if mode == "AIRFLOW_ASYNC" else COSMOS_FILE_PROFILE.format(profiles=profiles)
        out.append((Variant(f"cosmos_{mode.lower()}", "", COSMOS_PYTHON, env={"AIRFLOW_CONN_BENCH_GCP": GCP_CONN}),
                    _write(workdir / f"cosmos_{mode.lower()}_{n}.py",
                           COSMOS.format(mode=mode, execution_extra=extra, profile=profile, **fmt))))
    return out


def dbt_ls_variants(workdir: Path, n: int, project: Path, tests: str) -> list[tuple[Variant, Path]]:
    fmt = {"manifest": None, "project": str(project), "profiles": str(project / "profiles.yml"), "tests": tests,
           "load": "DBT_LS", "mode": "LOCAL"}
    ours = _write(workdir / f"ours_dbtls_{n}.py", OURS.format(**fmt))
    cosmos = _write(workdir / f"cosmos_dbtls_{n}.py", COSMOS.format(
        execution_extra="", profile=COSMOS_FILE_PROFILE.format(profiles=fmt["profiles"]), **fmt))
    cache = str(workdir / f"dbtls-cache-{n}")
    return [(Variant("ours_dbt_ls_cold", "", fresh_cache=True), ours),
            (Variant("ours_dbt_ls_cached", "", env={"AIRFLOW__COSMOS__CACHE_DIR": cache}), ours),
            (Variant("cosmos_dbt_ls", "", COSMOS_PYTHON), cosmos)]


def _ratio(row: dict, name: str) -> float | None:
    base, other = row["variants"].get("floor", {}), row["variants"].get(name, {})
    if "median_s" not in base or "median_s" not in other or not base["median_s"]:
        return None
    return round(other["median_s"] / base["median_s"], 2)


def run(models: list[int], runs: int, workdir: Path, tests: str = "NONE", dbt_ls_models: list[int] = (),
        dbt_ls_runs: int = 3, cosmos_runs: int | None = None) -> list[dict]:
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in sorted(set(models) | set(dbt_ls_models)):
        project = write_project(workdir / f"project_{n}", n)
        manifest = parse(project)
        row: dict = {"models": n, "tests": tests, "variants": {}}
        if n in models:
            for variant, dag_file in manifest_variants(workdir, n, project, manifest, tests):
                k = cosmos_runs if cosmos_runs and variant.python == COSMOS_PYTHON else runs
                row["variants"][variant.name] = measure(variant, dag_file, k)
        if n in dbt_ls_models:
            shutil.rmtree(project / "target", ignore_errors=True)  # no manifest anywhere: dbt ls must run
            for variant, dag_file in dbt_ls_variants(workdir, n, project, tests):
                row["variants"][variant.name] = measure(variant, dag_file, dbt_ls_runs)
        row["ratio_vs_floor"] = {k: _ratio(row, k) for k in row["variants"] if k != "floor"}
        rows.append(row)
        for name, v in row["variants"].items():
            shown = (f"{v['median_s']:.3f}s  rss {v['peak_rss_mb']} MB  tasks {v['tasks']}  "
                     f"x{row['ratio_vs_floor'].get(name)} floor" if "median_s" in v
                     else f"ERROR {v['error'].splitlines()[-1][:160]}")
            print(f"parse {n:>5} models  {name:22} {shown}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--dbt-ls-models", type=int, nargs="*", default=[100])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tests", default="NONE", choices=["NONE", "AFTER_EACH", "AFTER_ALL"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cosmos-async-bench/parse"))
    args = parser.parse_args()
    rows = run(args.models, args.runs, args.workdir, args.tests, args.dbt_ls_models)
    print("results:", write_results("parse", rows))


if __name__ == "__main__":
    main()
