"""Which relations SQL reads and writes, on hostile SQL, and which captured nodes that makes depend on others."""

from __future__ import annotations

from cosmos_async.dbt.captured import Capture, LoadCapture, NodeCapture
from cosmos_async.dbt.run_dependencies import mark_run_dependencies
from cosmos_async.dbt.sql_relations import Relation, relations_read, relations_written
from cosmos_async.project.manifest import DbtNode, Manifest

P = "proj"


def test_reads_skip_comments_strings_ctes_and_extract() -> None:
    sql = """
    -- from `proj`.`d`.`in_a_line_comment`
    /* select * from proj.d.in_a_block_comment */
    # from proj.d.in_a_hash_comment
    with stg_orders as (select 'from proj.d.in_a_string' as s, "join proj.d.in_dq" as t,
                               '''from proj.d.in_triple''' as u from `proj.d.real_one`)
    select extract(year from o.order_date), * from stg_orders o
    join `proj`.d.`joined` j using (id), d2.comma_joined as c, unnest(o.items)
    where exists (select 1 from my-proj.d3.sub_query)
    """
    reads = relations_read(sql, P, "d")
    assert {Relation(P, "d", "real_one"), Relation(P, "d", "joined"), Relation(P, "d2", "comma_joined"),
            Relation("my-proj", "d3", "sub_query")} <= reads
    assert not [r for r in reads if r.table is not None and r.table.startswith("in_")], reads
    assert Relation(P, "d", "stg_orders") not in reads  # the CTE, not the table of the default dataset
    # What else counts are alias.column names (o.order_date, o.items): no node builds such a table.
    assert {r.dataset for r in reads} == {"d", "d2", "d3", "o"}


def test_cte_shadows_a_table_of_the_default_dataset() -> None:
    assert relations_read("with stg as (select 1) select * from stg", P, "d") == set()
    assert relations_read("select * from stg", P, "d") == {Relation(P, "d", "stg")}
    assert relations_read("select * from stg", P) == set()  # no default dataset: not a table name


def test_information_schema_reads_a_listing_unless_filtered_to_named_tables() -> None:
    columns = "select column_name from `proj`.`d`.INFORMATION_SCHEMA.COLUMNS"
    assert relations_read(columns, P) == {Relation(P, "d", contents=True)}
    assert relations_read(columns + " where table_name = 'orders'", P) == {Relation(P, "d", "orders")}
    assert relations_read(columns + " where table_name in ('a', 'b')", P) == {Relation(P, "d", "a"),
                                                                             Relation(P, "d", "b")}
    for wider in (" where table_name like 'stg%'", " where table_name = 'a' or true",
                  " where not table_name = 'a'"):
        assert relations_read(columns + wider, P) == {Relation(P, "d", contents=True)}, wider
    assert relations_read("select * from `region-us`.INFORMATION_SCHEMA.SCHEMATA", P) == {
        Relation(P, contents=True)}


def test_writes_of_dbt_statements_and_hook_scripts() -> None:
    script = """create schema if not exists `proj`.`d`;
    create or replace view `proj`.`d`.`v` as select * from `proj`.`d`.`only_read`;
    insert into proj.d.audit (event) values ('insert into proj.d.in_a_string');
    merge into `proj`.`d`.`m` as t using (select 1 as id) s on t.id = s.id
      when matched then update set t.id = s.id when not matched then insert row;
    create temp table session_only as select 1;  -- insert into proj.d.in_a_comment
    delete from proj.d.pruned where true; truncate table proj.d.emptied; drop view if exists d.dropped"""
    assert relations_written(script, P) == {
        Relation(P, "d"), Relation(P, "d", "v"), Relation(P, "d", "audit"), Relation(P, "d", "m"),
        Relation(P, "d", "pruned"), Relation(P, "d", "emptied"), Relation(P, "d", "dropped")}


def _node(uid: str, *, depends_on: tuple[str, ...] = (), name: str | None = None) -> DbtNode:
    kind = uid.split(".")[0]
    return DbtNode(uid, kind, name or uid.split(".")[-1], "x", "", (), frozenset(), {"materialized": "table"},
                   depends_on, database=P, schema="d", alias=name or uid.split(".")[-1])


def test_attribution_others_and_hooks_count_self_and_the_run_start_phase_do_not() -> None:
    stg = NodeCapture(["create or replace view `proj`.`d`.`stg` as select 1 as a"])
    wide = NodeCapture(["create or replace table `proj`.`d`.`wide` as select a from `proj`.`d`.`stg`"],
                       reads=[Relation(P, "d", "stg"), Relation(P, "d", "wide")])
    incremental = NodeCapture(["merge into `proj`.`d`.`inc` using (select 1) on false when not matched then "
                               "insert row"], reads=[Relation(P, "d", "inc"), Relation(P, "d", "INC__dbt_tmp")])
    lookup = NodeCapture(["create or replace table `proj`.`d`.`lk` as select 1"],
                         reads=[Relation(P, "ext", "lookup"), Relation(P, "d")])  # dataset hooks create
    stores = NodeCapture(["create or replace table `proj`.`d`.`st` as select 1"], reads=[Relation(P, "d", "shops")])
    lister = NodeCapture(["create or replace table `proj`.`d`.`ls` as select 1"],
                         reads=[Relation(P, "d", contents=True)])
    failed = NodeCapture(fallback="its statements could not be captured: boom")  # its relation: from the manifest
    child = NodeCapture(["create or replace table `proj`.`d`.`child` as select 1"], reads=[Relation(P, "d", "snap")])
    seed_reader = NodeCapture(["create or replace table `proj`.`d`.`sr` as select 1"],
                              reads=[Relation(P, "d", "raw")])
    seed = NodeCapture(loads=[LoadCapture({"load": {"destinationTable": {"projectId": P, "datasetId": "d",
                                                                         "tableId": "raw"}}}, b"a\n1\n", 0)])
    hooks = NodeCapture(["create schema if not exists `proj`.`d`; create or replace table `proj`.`d`.`shops` as "
                         "select 1"], reads=[Relation(P, "d", "stg"), Relation(P, contents=True)])
    end = NodeCapture(["insert into `proj`.`d`.`audit` select count(*) from `proj`.`d`.`wide`"],
                      reads=[Relation(P, "d", "wide")])
    nodes = {"model.x.stg": stg, "model.x.wide": wide, "model.x.inc": incremental, "model.x.lk": lookup,
             "model.x.st": stores, "model.x.ls": lister, "snapshot.x.snap": failed, "model.x.child": child,
             "seed.x.raw": seed, "model.x.sr": seed_reader}
    capture = Capture(nodes, on_run_start=hooks, on_run_end=end)
    manifest = Manifest.from_nodes([_node(uid, depends_on=("model.x.stg",) if uid == "model.x.wide" else ())
                                    for uid in nodes], "x")

    marked = mark_run_dependencies(capture, manifest, P)

    assert wide.fallback == ("its SQL depends on `proj.d.stg`, which model.x.stg builds in this run: compiled on "
                             "a worker after it")
    assert wide.after_parents and stores.after_parents
    assert stores.fallback is not None and "`proj.d.shops`, which the on-run-start hooks build" in stores.fallback
    assert "snapshot.x.snap builds" in (child.fallback or "")  # known from the manifest: its capture failed
    assert "not upstream of it" in (child.fallback or "")
    assert "seed.x.raw builds" in (seed_reader.fallback or "")
    assert lister.fallback is not None and "the tables of `proj.d`" in lister.fallback
    assert failed.fallback == "its statements could not be captured: boom"
    # Its own relations, a table no node builds, a dataset the hooks create: not dependencies.
    assert incremental.fallback is None and lookup.fallback is None and stg.fallback is None
    assert hooks.fallback is None  # on-run-start runs before every node
    assert end.fallback is not None and end.fallback.endswith("the hook's SQL cannot be captured before the run")
    assert set(marked) == {"model.x.wide", "model.x.st", "model.x.child", "model.x.sr", "model.x.ls", "on-run-end"}
