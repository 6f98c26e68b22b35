"""The users' Cosmos DAGs (the seed documents) run after changing only their import, checked against `dbt build`.

Each DAG in tests/e2e/seed_dags/ transcribes a seed: warehouse profiles became their BigQuery counterparts on the
emulator, the dbt project became mini_shop, and ``cosmos`` became ``cosmos_async`` in the imports; each file's
docstring lists exactly what changed. Every DAG runs in its seed's own execution mode and in AIRFLOW_ASYNC on real
Airflow processes (one stack: seed 003's runs first, then all the others together), and in AIRFLOW_ASYNC under
``airflow dags test`` (what users debug with), each variant into a dataset of its own; every table it builds must
equal what a plain ``dbt build`` of mini_shop builds. A variant differs from its seed file by the execution mode,
the dag_id and the dataset (or, for seed 003, the connection that names it), which ``variant_source`` substitutes
and checks it substituted.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from cosmos_async.dbt.venv import ensure_venv
from tests.support.airflow import WAIT_SLACK, AirflowStack, AirflowStackError
from tests.support.credentials import service_account_key
from tests.support.dbt_oracle import built_tables, dbt_build

# One module fixture runs every variant (one stack, then the dags test processes): allow it more than the
# suite's per-test limit, which it is counted against.
pytestmark = pytest.mark.timeout(2400)

REPO = Path(__file__).resolve().parents[2]
SEED_DAGS = Path(__file__).parent / "seed_dags"
AIRFLOW = Path(sys.executable).with_name("airflow")
DBT_BIGQUERY = f"dbt-bigquery=={version('dbt-bigquery')}"


@dataclass(frozen=True)
class Seed:
    file: str  # stem of the transcription in seed_dags/
    dag_id: str
    mode: str  # the seed's own ExecutionMode member
    dataset: str | None  # the dataset literal in the file; None: the DAG's connection holds it
    conn_id: str | None = None  # the connection that holds the dataset when the file names none


SEEDS = (
    Seed("seed_000_task_groups", "seed_000_task_groups", "LOCAL", "sandbox_schema"),
    Seed("seed_001_dbt_tickit_medallion_dag", "dbt_tickit_medallion_dag", "LOCAL", "tickit_bronze"),
    Seed("seed_002_cosmos_async_dag", "cosmos_async_dag", "AIRFLOW_ASYNC", "cosmos_async_demo"),
    Seed("seed_003_example_watcher_taskgroup", "example_watcher_taskgroup", "WATCHER", None, "bigquery_connection"),
)
RUNNERS = ("dagstest", "stack")


@dataclass(frozen=True)
class Variant:
    seed: Seed
    mode: str

    @property
    def name(self) -> str:
        return f"{self.seed.dag_id}__{self.mode.lower()}"

    @property
    def dag_id(self) -> str:
        return self.name  # seed 000 derives its dag_id from the file name, which is this too

    def dataset(self, runner: str) -> str:
        return f"{runner}_{self.seed.file[:8]}_{self.mode.lower()}"

    @property
    def file_name(self) -> str:
        return f"{self.seed.file}__{self.mode.lower()}.py"

    @property
    def conn_id(self) -> str | None:
        """A connection of the variant's own for a seed whose connection holds the dataset: variants sharing one
        would all build into the first variant's dataset."""
        return f"{self.seed.conn_id}_{self.mode.lower()}" if self.seed.conn_id else None


VARIANTS = tuple(Variant(seed, mode) for seed in SEEDS for mode in dict.fromkeys([seed.mode, "AIRFLOW_ASYNC"]))
# Under `airflow dags test` only the AIRFLOW_ASYNC variants: the seeds' own modes (LOCAL, WATCHER: a dbt run per
# task or a producer) run on the Airflow stack, and each LOCAL run under `dags test` cost the suite minutes of CPU.
DAGS_TEST_VARIANTS = tuple(v for v in VARIANTS if v.mode == "AIRFLOW_ASYNC")


def variant_source(variant: Variant, runner: str) -> str:
    """The seed file with the variant's execution mode, dag_id and dataset (or the connection holding it), and
    nothing else, substituted."""
    seed = variant.seed
    text = (SEED_DAGS / f"{seed.file}.py").read_text()
    swaps = [(f'dag_id="{seed.dag_id}"', f'dag_id="{variant.dag_id}"')] if seed.file != seed.dag_id else []
    if variant.mode != seed.mode:
        swaps.append((f"=ExecutionMode.{seed.mode}", f"=ExecutionMode.{variant.mode}"))
    if seed.dataset is not None:
        swaps.append((f'"{seed.dataset}"', f'"{variant.dataset(runner)}"'))
    if seed.conn_id is not None:
        swaps.append((f'conn_id="{seed.conn_id}"', f'conn_id="{variant.conn_id}"'))
    for old, new in swaps:
        assert text.count(old) == 1, f"{seed.file}: expected {old!r} once"
        text = text.replace(old, new)
    return text


def _case_id(variant: Variant) -> str:
    return variant.name


def _cases(variants: tuple[Variant, ...] = VARIANTS) -> list:
    return [pytest.param(v, id=_case_id(v)) for v in variants]


@dataclass
class Outcome:
    """How one variant's run ended: the run state, every task's state, and what to show when it failed."""

    state: str
    tasks: dict[str, str]
    detail: str
    instances: tuple[dict, ...] = ()


# -- shared set-up --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(bigquery_emulator) -> bigquery.Client:
    return bigquery.Client(project="demo-proj", credentials=AnonymousCredentials(),
                           client_options=ClientOptions(api_endpoint=bigquery_emulator.endpoint))


def _profile_env(endpoint: str, dataset: str) -> dict[str, str]:
    """What mini_shop's own profiles.yml reads (seed 001 sets it through operator_args["env"])."""
    return {"DBT_BIGQUERY_PROJECT": "demo-proj", "DBT_BIGQUERY_DATASET": dataset,
            "DBT_BIGQUERY_API_ENDPOINT": endpoint, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}


@pytest.fixture(scope="module")
def mini_shop(tmp_path_factory, bigquery_emulator) -> Path:
    """mini_shop with target/manifest.json, which seed 000 is given (its blog's takeaway 4)."""
    project = tmp_path_factory.mktemp("mini_shop") / "mini_shop"
    shutil.copytree(SEED_DAGS / "dbt" / "mini_shop", project)
    env = {**os.environ, **_profile_env(bigquery_emulator.endpoint, "parse")}
    out = subprocess.run([str(Path(sys.executable).with_name("dbt")), "parse", "--project-dir", str(project),
                          "--profiles-dir", str(project)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]
    return project


@pytest.fixture(scope="module")
def oracle(tmp_path_factory, mini_shop, bigquery_emulator, client) -> dict[str, list[tuple]]:
    """The tables a plain ``dbt build`` of mini_shop makes."""
    project = tmp_path_factory.mktemp("oracle") / "mini_shop"
    shutil.copytree(mini_shop, project)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in _profile_env(bigquery_emulator.endpoint, "seed_oracle").items():
            mp.setenv(name, value)
        dbt_build(project)
    tables = built_tables(client, "seed_oracle")
    assert {".customer_orders", ".customers_snapshot", ".stg_orders"} <= set(tables), tables
    return tables


@pytest.fixture(scope="module")
def uv_constraint(tmp_path_factory) -> Path:
    """Pins dbt-core to the installed one for virtualenv builds (a deployment's constraints file): the seeds name
    only dbt-bigquery, and the dbt-core 1.12 it would pull cannot be built here (FIELD-NOTES)."""
    path = tmp_path_factory.mktemp("uv") / "constraints.txt"
    path.write_text(f"dbt-core=={version('dbt-core')}\n")
    return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, uv_constraint) -> Path:
    """[cosmos] cache_dir of every run: parse-time `dbt ls` results and the dbt virtualenv are built once."""
    cache = tmp_path_factory.mktemp("cosmos-cache")
    # Seed 001's dbt lives in a virtualenv of its own (as MWAA and Astro document); seed 002's
    # async_py_requirements name the same requirement, so its setup task finds this one ready.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UV_CONSTRAINT", str(uv_constraint))
        ensure_venv([DBT_BIGQUERY], root=cache / "venvs")
    return cache


def _deployment_env(runner: str, key: dict, bigquery_endpoint: str, gcs_endpoint: str, bucket: str,
                    cache: Path, uv_constraint: Path) -> dict[str, str]:
    """What the deployment sets: connections, Variables, [cosmos] options, the env the seeds read."""
    def conn(**extra: str) -> str:
        return json.dumps({"conn_type": "google_cloud_platform",
                           "extra": {"project": "demo-proj", "keyfile_dict": json.dumps(key),
                                     "bigquery_api_endpoint": bigquery_endpoint,
                                     "storage_api_endpoint": gcs_endpoint, **extra}})

    # Seed 003's mapping gets project and dataset from its connection, as Cosmos's BigQuery mappings can: one
    # connection per variant, each naming the variant's dataset.
    dataset_conns = {f"AIRFLOW_CONN_{v.conn_id.upper()}": conn(dataset=v.dataset(runner))
                     for v in VARIANTS if v.conn_id}
    return {
        "AIRFLOW_CONN_GCP_CONN": conn(),
        **dataset_conns,
        "AIRFLOW_VAR_BIGQUERY_API_ENDPOINT": bigquery_endpoint,
        "AIRFLOW_VAR_BIGQUERY_PROJECT": "demo-proj",
        "AIRFLOW__COSMOS__REMOTE_TARGET_PATH": f"gs://{bucket}/seed_dags_{runner}",
        "AIRFLOW__COSMOS__REMOTE_TARGET_PATH_CONN_ID": "gcp_conn",
        "AIRFLOW__COSMOS__CACHE_DIR": str(cache),
        "AIRFLOW__COSMOS__POLL_INTERVAL": "0.5",
        "DBT_ADAPTER_VERSION": version("dbt-bigquery"),
        # Seeds 002 and 003 give no manifest, so each parse runs `dbt ls` (cached afterwards); with a dozen
        # processes on 2 CPUs the first one takes longer than Airflow's 30 s default (150 s was seen to run out on a
        # loaded machine). Cosmos deployments that render with dbt ls raise these too.
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "300",
        "AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT": "330",
        # The seeds' @daily schedules would add runs of their own into the same datasets.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "UV_CONSTRAINT": str(uv_constraint),
        "PYTHONPATH": str(REPO),
    }


def _dags_folder(root: Path, runner: str, mini_shop: Path, cache: Path) -> Path:
    # Laid out like an Astro project (/usr/local/airflow/{dags,python3-virtualenv}): the venv beside the dags.
    folder = root / f"project_{runner}" / "dags"
    shutil.copytree(mini_shop, folder / "dbt" / "mini_shop")
    venvs = folder.parent / "python3-virtualenv"
    venvs.mkdir()
    (venvs / "dbt-env").symlink_to(next((cache / "venvs").glob("dbt-*/")).resolve())
    for variant in VARIANTS:
        (folder / variant.file_name).write_text(variant_source(variant, runner))
    return folder


@pytest.fixture(scope="module")
def key(token_endpoint) -> dict:
    return service_account_key(token_endpoint.url)


@pytest.fixture(scope="module")
def deployment(key, bigquery_emulator, gcs_emulator, cache_dir, uv_constraint):
    def env(runner: str) -> dict[str, str]:
        return _deployment_env(runner, key, bigquery_emulator.endpoint, gcs_emulator.endpoint,
                               gcs_emulator.extra["bucket"], cache_dir, uv_constraint)
    return env


# -- airflow dags test ----------------------------------------------------------------------------------------


def _sqlite_states(db: Path, dag_id: str) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("select task_id, state from task_instance where dag_id = ?", (dag_id,)))


class DagsTests:
    """Every variant under ``airflow dags test``, all at once, each in an Airflow home of its own."""

    def __init__(self, root: Path, folder: Path, env: dict[str, str]) -> None:
        migrated = root / "migrated"
        migrated.mkdir(parents=True)
        subprocess.run([str(AIRFLOW), "db", "migrate"], env={**env, "AIRFLOW_HOME": str(migrated)}, check=True,
                       capture_output=True)
        self.procs: dict[str, tuple[Path, subprocess.Popen]] = {}
        for variant in DAGS_TEST_VARIANTS:
            home = root / variant.name
            home.mkdir()
            shutil.copy(migrated / "airflow.db", home / "airflow.db")
            with (home / "dags-test.log").open("w") as log:
                self.procs[variant.name] = (home, subprocess.Popen(
                    [str(AIRFLOW), "dags", "test", variant.dag_id, "-f", str(folder / variant.file_name)],
                    env={**env, "AIRFLOW_HOME": str(home)}, stdout=log, stderr=subprocess.STDOUT))

    def outcomes(self) -> dict[str, Outcome]:
        found = {}
        for name, (home, proc) in self.procs.items():
            code = proc.wait(timeout=600 * WAIT_SLACK)
            tasks = _sqlite_states(home / "airflow.db", name)
            output = (home / "dags-test.log").read_text(errors="replace")
            errors = [line for line in output.splitlines() if "Error" in line][:5]
            state = "success" if code == 0 and tasks and set(tasks.values()) == {"success"} else "failed"
            found[name] = Outcome(state, tasks, "\n".join([f"exit {code}, tasks {tasks}", *errors, output[-3000:]]))
        return found

    def stop(self) -> None:
        for _, proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# -- real Airflow processes -----------------------------------------------------------------------------------


# Seed 003 gives every task a 120 s execution_timeout, its setup task included: its runs go first, with no other
# run of the stack beside them, so that on the slower 2-CPU machines of this kind the setup's dbt run gets the CPU.
TIMED_SEED = "seed_003_example_watcher_taskgroup"


def _stack_outcomes(af: AirflowStack) -> dict[str, Outcome]:
    """Seed 003's variants, then all the others at once, each triggered as soon as it has loaded."""
    outcomes: dict[str, Outcome] = {}
    timed = [v for v in VARIANTS if v.seed.file == TIMED_SEED]
    for batch in (timed, [v for v in VARIANTS if v not in timed]):
        runs = {}
        for variant in batch:
            try:
                af.wait_for_dag(variant.dag_id, timeout=360, dag_file=variant.file_name)
            except AirflowStackError as e:
                outcomes[variant.name] = Outcome("not loaded", {}, str(e)[:4000])
                continue
            runs[variant.name] = af.trigger(variant.dag_id)
        for name, run_id in runs.items():
            state = af.wait_for_run(name, run_id, timeout=400)
            instances = tuple(af.task_instances(name, run_id))
            tasks = {ti["task_id"]: ti["state"] for ti in instances}
            logs = [af.task_log(name, run_id, t)[-2500:] for t, s in tasks.items() if s == "failed"]
            outcomes[name] = Outcome(state, tasks, "\n".join([str(tasks), *logs]), instances)
    return outcomes


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mini_shop, cache_dir, deployment, airflow_pycache,
         airflow_database_url) -> dict[str, dict[str, Outcome]]:
    """Outcomes by runner: the one Airflow stack (on the session's PostgreSQL when there is one: six runs at once
    keep SQLite's single writer busy), then the ``dags test`` processes once it has stopped."""
    root = tmp_path_factory.mktemp("seed-runs")
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env = {**deployment("stack"), "PYTHONPYCACHEPREFIX": str(airflow_pycache)}
    # Three tasks at once, and nothing else of this module beside them (see TIMED_SEED): seed 003's setup took over
    # 120 s while the `dags test` processes ran beside the stack. A queued task's timeout does not run.
    with AirflowStack(root / "airflow", _dags_folder(root, "stack", mini_shop, cache_dir), env=env,
                      parallelism=3, database_url=airflow_database_url) as af:
        stack = _stack_outcomes(af)
    folder = _dags_folder(root, "dagstest", mini_shop, cache_dir)
    dags_tests = DagsTests(root / "dagstest", folder, {
        **base, **deployment("dagstest"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(folder), "PYTHONPYCACHEPREFIX": str(airflow_pycache)})
    try:
        return {"dagstest": dags_tests.outcomes(), "stack": stack}
    finally:
        dags_tests.stop()


# -- the cases ------------------------------------------------------------------------------------------------


def _assert_builds_what_dbt_builds(outcome: Outcome, variant: Variant, runner: str, client, oracle) -> None:
    assert outcome.state == "success", outcome.detail
    assert set(outcome.tasks.values()) == {"success"}, outcome.detail
    assert built_tables(client, variant.dataset(runner)) == oracle


@pytest.mark.parametrize("variant", _cases(DAGS_TEST_VARIANTS))
def test_seed_dag_under_dags_test(variant: Variant, runs, client, oracle) -> None:
    _assert_builds_what_dbt_builds(runs["dagstest"][variant.name], variant, "dagstest", client, oracle)


@pytest.mark.parametrize("variant", _cases())
def test_seed_dag_on_airflow(variant: Variant, runs, client, oracle) -> None:
    _assert_builds_what_dbt_builds(runs["stack"][variant.name], variant, "stack", client, oracle)


def test_seed_003_shape_waits_for_its_upstream_task(runs) -> None:
    """Item 9: EmptyOperator >> DbtTaskGroup, in AIRFLOW_ASYNC: the group's tasks run after pre_dbt."""
    outcome = runs["stack"]["example_watcher_taskgroup__airflow_async"]
    assert outcome.tasks.get("pre_dbt") == "success", outcome.detail
    group = {t: s for t, s in outcome.tasks.items() if t.startswith("first_dbt_task_group.")}
    assert "first_dbt_task_group.customer_orders_run" in group, outcome.tasks
    assert set(group.values()) == {"success"}, outcome.detail
    times = {ti["task_id"]: ti for ti in outcome.instances}
    # Model tasks start (deferred, waiting for their parents in the triggerer) with the run; the group's setup,
    # which every one of them waits for, starts only once pre_dbt has ended.
    setup = times["first_dbt_task_group.dbt_setup_async"]
    assert times["pre_dbt"]["end_date"] <= setup["start_date"], times
    assert all(setup["end_date"] <= times[t]["end_date"] for t in group), times
