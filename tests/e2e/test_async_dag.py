"""AIRFLOW_ASYNC end to end on real Airflow processes, the BigQuery emulator and the GCS emulator.

The example DAG (dev/dags/corner_shop.py) runs unchanged; a second DAG file written by the test adds variants of
it: one with a broken model, one with start-from-trigger turned off (the worker path), runs overlapping, and two
that authenticate with the user's own profiles.yml (a key file; the key JSON in an env var of the processes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gcsfs
import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from tests.support.airflow import AirflowStack
from tests.support.credentials import TokenEndpoint, secret_fragments, service_account_key
from tests.support.dbt_oracle import built_tables, dbt_build, dbt_example_project
from tests.support.trigger_rows import TriggerRowRecorder

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dev" / "dags"
DATASET = "async_e2e"
REMOTE_ROOT = "runs"
PROFILE_DAGS = {"corner_shop_profile_keyfile": "keyfile", "corner_shop_profile_env": "env_json"}
INTROSPECT_PROJECT = REPO / "tests" / "projects" / "introspect"
INTROSPECT_EXT = "e2e_lookup_src"  # the dataset of the table the introspect project reads as a source
SELECTED_TABLES = {"raw_orders", "raw_customers", "stg_orders", "stg_customers"}  # of the profile DAGs

VARIANTS = '''"""Variants of the example DAG for the end-to-end tests (airflow DAG file)."""
from datetime import datetime
from pathlib import Path

from corner_shop import profile_config, project_config
from cosmos_async import DbtDag, ExecutionConfig, ExecutionMode, ProfileConfig, ProjectConfig, RenderConfig
from cosmos_async import GoogleCloudServiceAccountDictProfileMapping

BROKEN = Path(__file__).parent / "broken_project"
common = dict(schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
              execution_config=ExecutionConfig(execution_mode=ExecutionMode.AIRFLOW_ASYNC))


def profile_in(dataset):
    return ProfileConfig(profile_name="corner_shop", target_name="dev",
                         profile_mapping=GoogleCloudServiceAccountDictProfileMapping(
                             conn_id="gcp_conn", profile_args={"dataset": dataset}))


# Subsets keep the suite short: what these runs show does not need every node.
# The worker path, with the run's files on file:// instead of the bucket.
LOCAL_REMOTE = "file://" + str(Path(__file__).parent / "remote")
corner_shop_worker = DbtDag(dag_id="corner_shop_worker", project_config=project_config,
                            profile_config=profile_config,
                            operator_args={"start_from_trigger": False, "remote_target_path": LOCAL_REMOTE},
                            render_config=RenderConfig(select=["+orders"]), **common)
corner_shop_broken = DbtDag(
    dag_id="corner_shop_broken",
    project_config=ProjectConfig(dbt_project_path=BROKEN, manifest_path=BROKEN / "manifest.json"),
    profile_config=profile_in("async_broken"), operator_args={"wait_for_parents": "scheduler"},
    render_config=RenderConfig(select=["+stg_orders", "+stg_customers", "orders"]), **common)
# The same waiting in the triggerer, the default (its own dataset: both runs may overlap).
corner_shop_broken_triggerer = DbtDag(
    dag_id="corner_shop_broken_triggerer",
    project_config=ProjectConfig(dbt_project_path=BROKEN, manifest_path=BROKEN / "manifest.json"),
    profile_config=profile_in("async_broken_triggerer"),
    render_config=RenderConfig(select=["+stg_orders", "+stg_customers", "orders"]), **common)
# Two runs at once share their tables, and dbt-bigquery reloads a seed by dropping it first: the overlapping
# runs read seeds loaded before them, so that one run's reload cannot break the other's reads. stg_customers and
# orders are in because dbt selects tests eagerly, and tests of stg_orders and stg_payments read them.
corner_shop_twice = DbtDag(
    dag_id="corner_shop_twice", project_config=project_config,
    profile_config=profile_in("async_twice"),
    render_config=RenderConfig(select=["+daily_revenue", "+orders", "stg_customers"],
                               exclude=["resource_type:seed"]), **common)
# Models whose SQL is generated from what their parents hold (tests/projects/introspect): compiled again on a
# worker once their parents ran, their jobs in the triggerer.
INTROSPECT = Path(__file__).parent / "introspect"
introspect_after_parents = DbtDag(
    dag_id="introspect_after_parents",
    project_config=ProjectConfig(dbt_project_path=INTROSPECT, manifest_path=INTROSPECT / "target" / "manifest.json"),
    profile_config=ProfileConfig(profile_name="introspect", target_name="dev",
                                 profile_mapping=GoogleCloudServiceAccountDictProfileMapping(
                                     conn_id="gcp_conn", profile_args={"dataset": "async_introspect"})),
    **common)
# The user's own profiles.yml (written by the test beside this file): the triggers authenticate with its target,
# one with a key file, one with the key JSON in an env var of the Airflow processes. No connection holds them.
PROFILES = Path(__file__).parent / "profiles_e2e.yml"
for target in ("keyfile", "env_json"):
    dag_id = "corner_shop_profile_" + target.split("_")[0]
    globals()[dag_id] = DbtDag(
        dag_id=dag_id, project_config=project_config,
        profile_config=ProfileConfig(profile_name="corner_shop", target_name=target, profiles_yml_filepath=PROFILES),
        # stg_customers too: dbt selects the relationships test of stg_orders, which reads it.
        render_config=RenderConfig(select=["+stg_orders", "+stg_customers"]), **common)
'''


@pytest.fixture(scope="module")
def key(token_endpoint) -> dict:
    return service_account_key(token_endpoint.url)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, bigquery_emulator, gcs_emulator, key, airflow_database_url) -> Iterator[AirflowStack]:
    dags = tmp_path_factory.mktemp("dags")
    shutil.copytree(DAGS, dags, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "target", "logs"))
    broken = dags / "broken_project"
    shutil.copytree(DAGS / "dbt" / "corner_shop", broken, ignore=shutil.ignore_patterns("target", "logs"))
    (broken / "models" / "staging" / "stg_orders.sql").write_text(
        "select order_id, no_such_column from {{ ref('raw_orders') }}\n")
    (dags / "corner_shop_variants.py").write_text(VARIANTS)
    introspect = dags / "introspect"
    shutil.copytree(INTROSPECT_PROJECT, introspect, ignore=shutil.ignore_patterns("target", "logs"))
    parsed = subprocess.run([str(Path(sys.executable).with_name("dbt")), "parse", "--project-dir", str(introspect),
                             "--profiles-dir", str(introspect), "--target-path", str(introspect / "target")],
                            capture_output=True, text=True,
                            env={**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"})
    assert parsed.returncode == 0, parsed.stdout[-2000:]
    keyfile = tmp_path_factory.mktemp("keys") / "dbt-runner.json"
    keyfile.write_text(json.dumps(key))
    (dags / "profiles_e2e.yml").write_text(_profiles_yml(keyfile, bigquery_emulator.endpoint))
    conn = {"conn_type": "google_cloud_platform",
            "extra": {"project": "demo-proj", "keyfile_dict": json.dumps(key),
                      "bigquery_api_endpoint": bigquery_emulator.endpoint,
                      "storage_api_endpoint": gcs_emulator.endpoint}}
    bucket = gcs_emulator.extra["bucket"]
    env = {"AIRFLOW_CONN_GCP_CONN": json.dumps(conn), "CORNER_SHOP_DATASET": DATASET,
           "AIRFLOW__COSMOS__REMOTE_TARGET_PATH": f"gs://{bucket}/{REMOTE_ROOT}",
           "AIRFLOW__COSMOS__REMOTE_TARGET_PATH_CONN_ID": "gcp_conn",
           "AIRFLOW__COSMOS__POLL_INTERVAL": "0.5",
           # Set for the processes only (the triggerer renders it there): no DAG or connection holds it.
           "CORNER_SHOP_KEYFILE_JSON": json.dumps(key),
           "INTROSPECT_EXT_DATASET": INTROSPECT_EXT, "PYTHONPATH": str(REPO)}
    with AirflowStack(tmp_path_factory.mktemp("airflow"), dags, env=env, parallelism=4,
                      database_url=airflow_database_url) as af:
        for dag_id in ("corner_shop", "corner_shop_worker", "corner_shop_broken", "corner_shop_broken_triggerer",
                       "corner_shop_twice", "introspect_after_parents", *PROFILE_DAGS):
            af.wait_for_dag(dag_id, timeout=120)
        yield af


@pytest.fixture(scope="module")
def trigger_rows(stack: AirflowStack) -> Iterator[TriggerRowRecorder]:
    """Every trigger row Airflow stores while this module's DAGs run, decrypted as Airflow reads it."""
    with TriggerRowRecorder(stack.home, database_url=stack.database_url) as recorder:
        yield recorder


def _profiles_yml(keyfile: Path, bigquery: str) -> str:
    common = {"type": "bigquery", "project": "demo-proj", "api_endpoint": bigquery, "location": "US", "threads": 4}
    targets = {
        "keyfile": {**common, "method": "service-account", "keyfile": str(keyfile),
                    "dataset": "async_profile_keyfile"},
        "env_json": {**common, "method": "service-account-json",
                     "keyfile_json": "{{ env_var('CORNER_SHOP_KEYFILE_JSON') | as_native }}",
                     "dataset": "async_profile_env"},
    }
    return json.dumps({"corner_shop": {"target": "keyfile", "outputs": targets}})  # JSON is YAML


@pytest.fixture(scope="module")
def client(bigquery_emulator) -> bigquery.Client:
    return bigquery.Client(project="demo-proj", credentials=AnonymousCredentials(),
                           client_options=ClientOptions(api_endpoint=bigquery_emulator.endpoint))


@pytest.fixture(scope="module")
def gcs(gcs_emulator) -> gcsfs.GCSFileSystem:
    return gcsfs.GCSFileSystem(project="demo-proj", token="anon", endpoint_url=gcs_emulator.endpoint)


def _remote_files(gcs: gcsfs.GCSFileSystem, bucket: str, dag_id: str) -> list[str]:
    gcs.invalidate_cache()
    try:
        return gcs.find(f"{bucket}/{REMOTE_ROOT}/{dag_id}")
    except FileNotFoundError:
        return []


def _states(af: AirflowStack, dag_id: str, run_id: str) -> dict[str, str]:
    return {ti["task_id"]: ti["state"] for ti in af.task_instances(dag_id, run_id)}


def _failures(af: AirflowStack, dag_id: str, run_id: str) -> str:
    """The states and the logs of failed tasks, for assertion messages."""
    states = _states(af, dag_id, run_id)
    logs = [af.task_log(dag_id, run_id, task)[-3000:] for task, state in states.items() if state == "failed"]
    return "\n".join([str(states), *logs])


@pytest.fixture(scope="module")
def oracle(bigquery_emulator, client, tmp_path_factory) -> dict[str, list[tuple]]:
    """The tables plain ``dbt build`` makes of the whole example project (dataset async_oracle), built once."""
    with pytest.MonkeyPatch.context() as mp:
        dbt_example_project("async_oracle", bigquery_emulator.endpoint, tmp_path_factory.mktemp("oracle"), mp)
    return built_tables(client, "async_oracle")


def test_async_run_builds_tables_without_worker_slots_and_cleans_up(
        stack: AirflowStack, trigger_rows: TriggerRowRecorder, oracle, client, gcs, gcs_emulator, key,
        token_endpoint) -> None:
    run_id = stack.trigger("corner_shop")
    assert stack.wait_for_run("corner_shop", run_id, timeout=300) == "success", _failures(stack, "corner_shop", run_id)
    states = _states(stack, "corner_shop", run_id)
    assert set(states.values()) == {"success"}, states

    assert built_tables(client, DATASET) == oracle

    slots = stack.worker_seconds("corner_shop", run_id)
    model_tasks = [t for t in states if t.endswith("run") and "dbt_" not in t]
    assert model_tasks and all(slots[t] == 0.0 for t in model_tasks), slots
    assert slots["dbt_setup_async"] > 0

    assert _remote_files(gcs, gcs_emulator.extra["bucket"], "corner_shop") == []
    rows = _our_trigger_rows(trigger_rows)
    assert any('"gcp_conn_id": "gcp_conn"' in text for text in rows.values()), rows
    _assert_no_secret_shown(stack, "corner_shop", run_id, key, token_endpoint, rows)


def _our_trigger_rows(recorder: TriggerRowRecorder) -> dict[str, str]:
    """The decrypted kwargs of every BigQueryNodeTrigger row seen so far, by trigger id."""
    rows = {f"trigger row {i}": text for i, (classpath, text) in enumerate(recorder.seen().values())
            if classpath.endswith("BigQueryNodeTrigger")}
    assert rows, f"no trigger row was seen while the DAG ran (recorder errors: {recorder.errors[-3:]})"
    return rows


def _assert_no_secret_shown(af: AirflowStack, dag_id: str, run_id: str, key: dict, token_endpoint: TokenEndpoint,
                            trigger_rows: dict[str, str]) -> None:
    """Nothing Airflow shows or stores for the run holds key material or an access token: task logs, every XCom,
    every task instance's details with its rendered template fields, and the trigger rows of its database (the
    uploaded files are scanned by tests/integration/test_secrets.py: teardown has deleted them by now)."""
    # The tokens the setup (dbt, gcsfs), the triggers and the teardown obtained with the key: secrets as well.
    tokens = token_endpoint.tokens()
    assert tokens, "the run never exchanged the key for a token: scanning for tokens would prove nothing"
    tis = af.task_instances(dag_id, run_id)
    details = {ti["task_id"]: af.task_instance(dag_id, run_id, ti["task_id"], ti["map_index"]) for ti in tis}
    # The setup has template fields and runs on a worker: if it shows none, the API moved and the scan is empty.
    assert {"dbt_vars", "env"} <= set(details["dbt_setup_async"]["rendered_fields"]), details["dbt_setup_async"]
    xcoms = af.xcom_entries(dag_id, run_id)
    assert {"dbt_setup_async", "stg_orders.run"} <= {e["task_id"] for e in xcoms}, xcoms
    texts = {f"log of {t}": af.task_log(dag_id, run_id, t) for t in details}
    texts |= {f"details of {t}": json.dumps(d) for t, d in details.items()}
    texts |= {f"xcom {e['task_id']}/{e['key']}": json.dumps(e) for e in xcoms}
    texts |= trigger_rows
    leaked = [(where, f[:12]) for where, text in texts.items() for f in [*secret_fragments(key), *tokens] if f in text]
    assert not leaked, f"key material or access tokens shown by Airflow: {leaked}"


def test_profiles_yml_runs_with_a_key_file_and_with_the_key_in_an_env_var(
        stack: AirflowStack, trigger_rows: TriggerRowRecorder, oracle, client, key, token_endpoint) -> None:
    """The triggers authenticate with the target of the user's profiles.yml, read in the triggerer: the trigger
    rows name the target and hold no key; the tables are dbt's."""
    runs = {dag_id: stack.trigger(dag_id) for dag_id in PROFILE_DAGS}
    for dag_id, run_id in runs.items():
        assert stack.wait_for_run(dag_id, run_id, timeout=300) == "success", _failures(stack, dag_id, run_id)

    # The selection's tables (run_audit also holds rows of hooks of models outside it: not comparable).
    selected = {name for name in oracle if name.rsplit(".", 1)[-1] in SELECTED_TABLES}
    assert len(selected) == len(SELECTED_TABLES), oracle.keys()
    for dataset in ("async_profile_keyfile", "async_profile_env"):
        got = built_tables(client, dataset)
        assert {name: got.get(name) for name in selected} == {name: oracle[name] for name in selected}, dataset

    rows = _our_trigger_rows(trigger_rows)
    for dag_id, target in PROFILE_DAGS.items():
        named = [t for t in rows.values() if f'"target": "{target}"' in t and "profiles_e2e.yml" in t]
        assert named, f"no trigger row of {dag_id} names its profiles.yml target: {list(rows.values())[:2]}"
        assert all('"gcp_conn_id": null' in t for t in named), named[0]
        _assert_no_secret_shown(stack, dag_id, runs[dag_id], key, token_endpoint, rows)


def test_worker_path_on_file_remote_holds_workers_and_cleans_up(stack: AirflowStack) -> None:
    run_id = stack.trigger("corner_shop_worker")
    assert stack.wait_for_run("corner_shop_worker", run_id, timeout=300) == "success", \
        _states(stack, "corner_shop_worker", run_id)
    slots = stack.worker_seconds("corner_shop_worker", run_id)
    assert all(seconds > 0 for seconds in slots.values()), (slots, stack.task_log("corner_shop_worker", run_id,
                                                                                   "stg_customers.run"))
    remote = stack.dags_folder / "remote"
    assert remote.is_dir() and not [p for p in remote.rglob("*") if p.is_file()], "teardown left files on file://"


def _broken_run(stack: AirflowStack, dag_id: str, gcs, gcs_emulator) -> tuple[str, dict[str, str]]:
    """Run a broken-project DAG to its end; check what both waiting modes share. Returns run id and states."""
    run_id = stack.trigger(dag_id)
    state = stack.wait_for_run(dag_id, run_id, timeout=300)
    assert state == "failed", stack.task_log(dag_id, run_id, "stg_orders.run")
    states = _states(stack, dag_id, run_id)
    assert states["stg_orders.run"] == "failed", states
    assert states["stg_customers.run"] == "success", states
    assert states["dbt_teardown_async"] == "success", states
    assert "no_such_column" in stack.task_log(dag_id, run_id, "stg_orders.run", try_number=1)
    assert _remote_files(gcs, gcs_emulator.extra["bucket"], dag_id) == []
    return run_id, states


def test_broken_model_fails_with_bigquery_message_and_teardown_still_cleans(stack: AirflowStack, gcs,
                                                                         gcs_emulator) -> None:
    """wait_for_parents='scheduler': Airflow's trigger rules leave the child upstream_failed."""
    _, states = _broken_run(stack, "corner_shop_broken", gcs, gcs_emulator)
    assert states["orders.run"] == "upstream_failed", states


def test_triggerer_mode_children_of_a_broken_model_fail_naming_it(stack: AirflowStack, gcs, gcs_emulator) -> None:
    """Waiting in the triggerer (the default): no trigger may set upstream_failed, so the child fails without running,
    with one line naming its failed parent."""
    run_id, states = _broken_run(stack, "corner_shop_broken_triggerer", gcs, gcs_emulator)
    assert states["orders.run"] == "failed", states
    assert "not run: upstream task 'stg_orders.test' ended failed" in stack.task_log(
        "corner_shop_broken_triggerer", run_id, "orders.run"), states


def test_concurrent_runs_keep_their_own_files_and_a_cleared_model_reruns(
        stack: AirflowStack, client, gcs, gcs_emulator, bigquery_emulator, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """astronomer-cosmos #1613 (runs deleting each other's SQL) and #2066 (a model cannot re-run after teardown)."""
    dbt_example_project("async_twice", bigquery_emulator.endpoint, tmp_path, monkeypatch, seeds_only=True)

    dag_id = "corner_shop_twice"
    first, second = stack.trigger(dag_id), stack.trigger(dag_id)
    for run_id in (first, second):
        assert stack.wait_for_run(dag_id, run_id, timeout=300) == "success", _failures(stack, dag_id, run_id)

    cleared = {ti["task_id"] for ti in stack.clear_task(dag_id, first, ["daily_revenue.run"])}
    # Airflow clears a task's setup and teardowns with it: the SQL is uploaded again before the model runs.
    assert {"dbt_setup_async", "daily_revenue.run", "dbt_teardown_async"} <= cleared, cleared
    assert stack.wait_for_run(dag_id, first, timeout=300) == "success", _states(stack, dag_id, first)
    rerun = {ti["task_id"]: ti for ti in stack.task_instances(dag_id, first)}["daily_revenue.run"]
    assert (rerun["state"], rerun["try_number"]) == ("success", 2)
    jobs = stack.xcom(dag_id, first, "daily_revenue.run")
    # The first try's job is older than the new upload: the re-run submits a new attempt instead of reusing it.
    assert jobs and jobs[0]["job_id"].endswith("_1"), jobs
    assert _remote_files(gcs, gcs_emulator.extra["bucket"], dag_id) == []
    assert built_tables(client, "async_twice")["_marts.daily_revenue"], "daily_revenue is empty"


def test_models_reading_their_parents_compile_after_them_and_run_their_jobs_in_the_triggerer(
        stack: AirflowStack, client, bigquery_emulator, gcs, gcs_emulator, tmp_path_factory) -> None:
    """The setup marks the models whose SQL comes from their parents' columns and values; each is compiled again
    on a worker once its parents ran, and its job then runs in the triggerer: the tables are plain dbt build's,
    no node runs through dbt (LOCAL), and teardown removes the recompiled files too."""
    client.create_dataset(INTROSPECT_EXT, exists_ok=True)
    client.query(f"create or replace table `demo-proj.{INTROSPECT_EXT}.lookup` as "
                 "select 1 as code, 'one' as label").result()
    run_id = stack.trigger("introspect_after_parents")
    dag_id = "introspect_after_parents"
    assert stack.wait_for_run(dag_id, run_id, timeout=300) == "success", _failures(stack, dag_id, run_id)

    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"BIGQUERY_API_ENDPOINT": bigquery_emulator.endpoint, "INTROSPECT_EXT_DATASET":
                            INTROSPECT_EXT, "BIGQUERY_DATASET": "oracle_async_introspect"}.items():
            mp.setenv(name, value)
        oracle = tmp_path_factory.mktemp("introspect_oracle") / "introspect"
        shutil.copytree(INTROSPECT_PROJECT, oracle, ignore=shutil.ignore_patterns("target", "logs"))
        dbt_build(oracle)
    expected = built_tables(client, "oracle_async_introspect")
    assert expected and built_tables(client, "async_introspect") == expected

    # Only the compile holds a worker: every other model task, and the jobs of these, stay in the triggerer.
    slots = stack.worker_seconds(dag_id, run_id)
    recompiled = {"orders_wide_run", "orders_star_run", "region_counts_run"}
    print("worker seconds of the recompiled tasks:", {t: slots[t] for t in sorted(recompiled)})
    assert all(slots[t] > 0 for t in recompiled), slots
    assert all(slots[t] == 0.0 for t in slots if t.endswith("_run") and t not in recompiled), slots
    setup_log = stack.task_log(dag_id, run_id, "dbt_setup_async")
    for name in ("orders_wide", "orders_star", "region_counts"):
        assert f"model.introspect.{name} will be compiled on a worker once its parents ran" in setup_log, setup_log
        log = stack.task_log(dag_id, run_id, f"{name}_run")
        assert f"compiled model.introspect.{name} again and uploaded it" in log, log[-3000:]
        assert "(LOCAL)" not in log, log[-3000:]
    assert _remote_files(gcs, gcs_emulator.extra["bucket"], dag_id) == []
