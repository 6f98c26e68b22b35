"""The capture seam on a real dbt project and the BigQuery emulator: statements per node, nothing written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from bench.synthetic import write_project
from cosmos_async.config import ProfileConfig
from cosmos_async.dbt.capture import capture_project
from cosmos_async.dbt.endpoint import is_read_only, is_schema_probe


@pytest.fixture
def client(bigquery_emulator) -> bigquery.Client:
    return bigquery.Client(project="demo-proj", credentials=AnonymousCredentials(),
                           client_options=ClientOptions(api_endpoint=bigquery_emulator.endpoint))


@pytest.fixture
def synthetic(tmp_path: Path, bigquery_emulator, monkeypatch: pytest.MonkeyPatch, request) -> tuple[Path, str]:
    dataset = f"cap_{request.node.name.replace('[', '_').replace(']', '')[:40]}"
    monkeypatch.setenv("BIGQUERY_API_ENDPOINT", bigquery_emulator.endpoint)
    monkeypatch.setenv("BIGQUERY_DATASET", dataset)
    return write_project(tmp_path / "synthetic", 12, seed=3), dataset


def _profile(project: Path) -> ProfileConfig:
    return ProfileConfig(profile_name="synthetic", target_name="dev", profiles_yml_filepath=project / "profiles.yml")


def _run_scripts(client: bigquery.Client, capture, order: list[str]) -> None:
    client.query(capture.on_run_start.script()).result()
    for unique_id in order:
        node = capture.nodes[unique_id]
        if node.fallback is None and node.statements:
            client.query(node.script()).result()


def test_read_only_classification() -> None:
    assert is_read_only("/* {\"app\": \"dbt\"} */ select 1")
    assert is_read_only("with a as (select ';' as x) select * from a")
    assert not is_read_only("create or replace table t as select 1")
    assert not is_read_only("select 1; drop table t")
    assert not is_read_only("-- select\ninsert into t values (1)")


def test_capture_writes_nothing_and_records_each_node(synthetic, client: bigquery.Client) -> None:
    project, dataset = synthetic
    capture = capture_project(project, _profile(project))
    assert not [d.dataset_id for d in client.list_datasets() if d.dataset_id == dataset], "capture wrote a dataset"
    models = [uid for uid in capture.nodes if uid.startswith("model.")]
    assert len(models) == 12
    for uid in models:
        assert capture.nodes[uid].fallback is None, capture.nodes[uid].fallback
        assert f"`{dataset}`.`{uid.split('.')[-1]}`" in capture.nodes[uid].script()
    assert any("create schema if not exists" in s.lower() for s in capture.on_run_start.statements)
    tests = [uid for uid in capture.nodes if uid.startswith("test.")]
    assert tests and all("failures" in capture.nodes[t].script() for t in tests)
    # Seeds are loaded with a load job: recorded (configuration and CSV bytes), no LOCAL fallback.
    seed = capture.nodes["seed.synthetic.source_rows"]
    assert seed.fallback is None and len(seed.loads) == 1 and seed.loads[0].data.startswith(b"id,amount\n")


def test_captured_scripts_build_the_same_tables_as_dbt(synthetic, client: bigquery.Client, tmp_path: Path) -> None:
    """LOCAL dbt is the oracle: replaying the captured scripts gives the same rows in every model."""
    from tests.support.dbt_oracle import dbt_build, table_rows

    project, dataset = synthetic
    capture = capture_project(project, _profile(project))
    order = list(capture.nodes)  # dbt's own execution order, one thread
    dbt_build(project, seeds_only=True)
    _run_scripts(client, capture, order)
    ours = {uid: table_rows(client, dataset, uid.split(".")[-1]) for uid in order if uid.startswith("model.")}

    os.environ["BIGQUERY_DATASET"] = dataset + "_oracle"
    dbt_build(project)
    theirs = {uid: table_rows(client, dataset + "_oracle", uid.split(".")[-1]) for uid in ours}
    assert ours == theirs
    assert all(rows for rows in ours.values())


def test_second_run_of_incremental_model_merges(synthetic, client: bigquery.Client) -> None:
    from tests.support.dbt_oracle import dbt_build

    project, _ = synthetic
    dbt_build(project)
    capture = capture_project(project, _profile(project))
    incremental = "model.synthetic.model_00002"
    script = capture.nodes[incremental].script().lower()
    assert "merge into" in script and "create or replace table" not in script
    full = capture_project(project, _profile(project), full_refresh=True)
    assert "create or replace table" in full.nodes[incremental].script().lower()


def test_schema_probe_classification() -> None:
    probe = ("/* {\"app\": \"dbt\"} */\nselect * from (\n    select *, 'x' as dbt_updated_at from `p`.`d`.`t`\n"
             ") as __dbt_sbq\nwhere false and current_timestamp() = current_timestamp()\nlimit 0")
    assert is_schema_probe(probe)
    assert is_schema_probe(probe.replace(" and current_timestamp() = current_timestamp()", ""))
    assert not is_schema_probe("select * from `p`.`d`.`t` where false limit 0")
    assert not is_schema_probe(probe.replace("limit 0", "limit 10"))


def _corner_shop(tmp_path: Path, endpoint: str, dataset: str,
                 monkeypatch: pytest.MonkeyPatch) -> tuple[Path, ProfileConfig]:
    import shutil

    project = tmp_path / "corner_shop"
    shutil.copytree(Path(__file__).resolve().parents[2] / "dev" / "dags" / "dbt" / "corner_shop", project)
    monkeypatch.setenv("BIGQUERY_API_ENDPOINT", endpoint)
    monkeypatch.setenv("BIGQUERY_DATASET", dataset)
    return project, ProfileConfig(profile_name="corner_shop", target_name="dev",
                                  profiles_yml_filepath=project / "profiles.yml")


def test_snapshot_first_run_is_captured_and_builds_what_dbt_build_builds(
        tmp_path: Path, bigquery_emulator, client: bigquery.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a fresh start the snapshot's table is created from its select: dbt's column-type probe of that select
    (a warning check, before its parent exists) is answered without forwarding, so the snapshot is a script,
    not a worker fallback, and replayed after its parents it leaves dbt build's rows."""
    from tests.support.dbt_oracle import built_tables, dbt_build

    project, profile = _corner_shop(tmp_path, bigquery_emulator.endpoint, "cap_snapshot_fresh", monkeypatch)
    capture = capture_project(project, profile, select=["+customers_snapshot"])
    snapshot = capture.nodes["snapshot.corner_shop.customers_snapshot"]
    assert snapshot.fallback is None, snapshot.fallback
    assert "create or replace table `demo-proj`.`cap_snapshot_fresh`.`customers_snapshot`" in snapshot.script()
    dbt_build(project, seeds_only=True)
    _run_scripts(client, capture, [uid for uid in capture.nodes if uid.startswith(("model.", "snapshot."))])
    ours = built_tables(client, "cap_snapshot_fresh")

    monkeypatch.setenv("BIGQUERY_DATASET", "cap_snapshot_fresh_oracle")
    dbt_build(project)
    theirs = built_tables(client, "cap_snapshot_fresh_oracle")
    assert ours[".customers_snapshot"] and ours[".customers_snapshot"] == theirs[".customers_snapshot"]
    assert ours[".stg_customers"] == theirs[".stg_customers"]


_ORDERS_APPENDED = """{{ config(materialized='incremental', unique_key='order_id',
             on_schema_change='append_new_columns') }}
select order_id, customer_id, status{extra} from {{ ref('stg_orders') }}
"""


def test_tables_a_node_creates_and_reads_back_are_captured_after_parents_and_build_what_dbt_build_builds(
        tmp_path: Path, bigquery_emulator, client: bigquery.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """Second runs that read the columns of a table the node itself creates: the snapshot merging from its staging
    table (after its parent's data changed), an incremental with ``on_schema_change='append_new_columns'`` whose
    select gained a column. Captured with the whole run, both wait for their parents (their staging selects read
    what this run builds); captured again once the parents ran (the worker's recompile), they are scripts whose
    staging columns came from BigQuery's answer for the select and whose new column is an ``ALTER TABLE``, and
    replayed they leave dbt build's tables. The emulator's tables.patch does not change a table's columns, so dbt
    build itself cannot add the incremental's column there: that table is checked against its definition."""
    from tests.support.dbt_oracle import built_tables, dbt_build, table_rows

    project, profile = _corner_shop(tmp_path, bigquery_emulator.endpoint, "cap_reread", monkeypatch)
    (project / "models" / "marts" / "orders_appended.sql").write_text(_ORDERS_APPENDED.replace("{extra}", ""))
    for dataset in ("cap_reread", "cap_reread_oracle"):
        monkeypatch.setenv("BIGQUERY_DATASET", dataset)
        dbt_build(project)  # first runs: the snapshot and the incremental tables exist, later runs merge
    seed = project / "seeds" / "raw_customers.csv"
    seed.write_text(seed.read_text().replace("1,Ada,Archer", "1,Ada,Abbott") + "11,Kit,Keller,2024-03-01\n")
    (project / "models" / "marts" / "orders_appended.sql").write_text(
        _ORDERS_APPENDED.replace("{extra}", ", upper(status) as status_code"))
    rereaders = ["snapshot.corner_shop.customers_snapshot", "model.corner_shop.orders_appended"]

    monkeypatch.setenv("BIGQUERY_DATASET", "cap_reread")
    whole = capture_project(project, profile, select=["+customers_snapshot", "+orders_appended"])
    for unique_id in rereaders:
        node = whole.nodes[unique_id]
        assert node.after_parents and "which model.corner_shop.stg_" in (node.fallback or ""), node.fallback
    dbt_build(project, seeds_only=True)
    _run_scripts(client, whole, [uid for uid in whole.nodes if uid.startswith("model.") and uid not in rereaders])
    again = capture_project(project, profile, select=["customers_snapshot", "orders_appended"])
    for unique_id in rereaders:
        node = again.nodes[unique_id]
        assert node.fallback is None, node.fallback
        assert "__dbt_tmp" in node.script() and "merge" in node.script().lower(), node.script()
    assert "ADD COLUMN IF NOT EXISTS `status_code` STRING" in again.nodes["model.corner_shop.orders_appended"].script()
    _run_scripts(client, again, rereaders)
    ours = built_tables(client, "cap_reread")

    monkeypatch.setenv("BIGQUERY_DATASET", "cap_reread_oracle")
    dbt_build(project, exclude=("orders_appended",))
    theirs = built_tables(client, "cap_reread_oracle")
    assert len(ours[".customers_snapshot"]) == 11 + 1, ours[".customers_snapshot"]  # Ada's old and new row
    compared = [".customers_snapshot", ".stg_customers", ".stg_orders"]
    assert {t: ours[t] for t in compared} == {t: theirs[t] for t in compared}
    expected = sorted(tuple(r.values()) for r in client.query(
        "select order_id, customer_id, status, upper(status) as status_code from cap_reread.stg_orders").result())
    assert table_rows(client, "cap_reread_marts", "orders_appended") == expected

def test_capture_answers_dbt_as_bigquery_documents(tmp_path: Path, bigquery_emulator,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Every answer the recording endpoint gives dbt (finished jobs, query results, datasets, upload sessions)
    fits the response schema of the method dbt called: a full ``dbt build`` of the example project through a
    front that checks the answers (the autouse contract fixture fails the test on any violation)."""
    import shutil

    from cosmos_async.dbt.endpoint import recording_endpoint
    from cosmos_async.dbt.invoke import dbt_workspace, node_outcomes
    from cosmos_async.profiles import resolve_target
    from tests.support.api_contract import LOG
    from tests.support.contract_front import ContractFront, answers_checked
    from tests.support.dbt_oracle import EXAMPLE_PROJECT

    monkeypatch.setenv("BIGQUERY_API_ENDPOINT", bigquery_emulator.endpoint)
    monkeypatch.setenv("BIGQUERY_DATASET", "cap_answers")
    project = tmp_path / "corner_shop"
    shutil.copytree(EXAMPLE_PROJECT, project, ignore=shutil.ignore_patterns("target", "target-*", "logs"))
    profile = ProfileConfig(profile_name="corner_shop", target_name="dev",
                            profiles_yml_filepath=project / "profiles.yml")
    answers = LOG.calls["answer"]
    # The endpoint forwards reads to the emulator, whose answers are not ours to check: a front between them
    # notes what it relayed.
    relayed: set[str] = set()
    relay = ContractFront(bigquery_emulator.extra["direct"], relayed=relayed)
    try:
        with recording_endpoint(relay.url) as (url, recorder), answers_checked(url, relayed) as checked, \
                dbt_workspace(project, profile, target={**resolve_target(profile), "api_endpoint": checked,
                                                        "threads": 1}) as workspace:
            outcomes = node_outcomes(workspace, ["build"], None, [recorder.on_event])
    finally:
        relay.stop()
    assert len(outcomes) > 20 and relayed
    assert any(node.loads for node in recorder.nodes.values()), "no seed upload went through the front"
    assert LOG.calls["answer"] - answers >= len(recorder.fake_jobs) > 20


def test_kept_parse_state_is_used_and_never_hides_a_change(synthetic, tmp_path: Path) -> None:
    from cosmos_async.dbt.invoke import dbt_workspace, invoke

    project, _ = synthetic
    state = tmp_path / "parse-state" / "partial_parse.msgpack"
    capture_project(project, _profile(project), partial_parse=state)
    assert state.is_file(), "the capture kept no partial-parse state"

    # A later dbt run of the same project and profile (here a LOCAL-style `dbt parse`) starts from that state.
    events: list[str] = []
    with dbt_workspace(project, _profile(project), partial_parse=state) as workspace:
        invoke(workspace, ["parse"], callbacks=[lambda msg: events.append(msg.info.name)])
    assert "PartialParsingSkipParsing" in events and "UnableToPartialParse" not in events, events

    # A model edited between runs is parsed again: its new SQL is what the next capture records.
    model = project / "models" / "model_00003.sql"
    model.write_text(model.read_text().rstrip() + "\n-- edited_after_the_first_capture\n")
    again = capture_project(project, _profile(project), partial_parse=state)
    assert "edited_after_the_first_capture" in again.nodes["model.synthetic.model_00003"].script()
