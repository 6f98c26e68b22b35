"""Selected nodes → Airflow task plan: ids, groups, edges through ephemeral models, test placement."""

from __future__ import annotations

from cosmos_async.config import TestBehavior
from cosmos_async.plan import plan_tasks, safe_id
from cosmos_async.project.manifest import DbtNode, Manifest


def node(uid: str, *parents: str, materialized: str = "table") -> DbtNode:
    kind, _, name = uid.split(".")
    return DbtNode(unique_id=uid, resource_type=kind, name=name, package_name="p", original_file_path="",
                   fqn=("p", name), tags=frozenset(), config={"materialized": materialized},
                   depends_on=tuple(parents))


GRAPH = Manifest.from_nodes([
    node("seed.p.raw", materialized="seed"),
    node("model.p.stg", "seed.p.raw", materialized="view"),
    node("model.p.eph", "model.p.stg", materialized="ephemeral"),
    node("model.p.mart", "model.p.eph"),
    node("model.p.other", "model.p.stg"),
    node("test.p.not_null_mart", "model.p.mart", materialized="test"),
    node("test.p.rel_mart_other", "model.p.mart", "model.p.other", materialized="test"),
], "p")
ALL = set(GRAPH.nodes)


def edges(plans) -> set[tuple[str, str]]:
    return {(up, p.key) for p in plans for up in p.upstream}


def test_after_each_groups_a_node_with_its_tests_and_children_wait_for_them() -> None:
    plans = plan_tasks(GRAPH, ALL, TestBehavior.AFTER_EACH)
    keys = [p.key for p in plans]
    assert "model_p_eph_run" not in keys and "eph_run" not in keys  # ephemeral: no task
    assert {"raw_seed", "stg_run", "mart.run", "mart.test", "other_run", "rel_mart_other_test"} == set(keys)
    assert edges(plans) == {
        ("raw_seed", "stg_run"), ("stg_run", "mart.run"),  # through the ephemeral model
        ("stg_run", "other_run"), ("mart.run", "mart.test"),
        ("mart.test", "rel_mart_other_test"), ("other_run", "rel_mart_other_test"),
    }


def test_after_all_runs_every_test_last() -> None:
    plans = plan_tasks(GRAPH, ALL, TestBehavior.AFTER_ALL)
    last = plans[-1]
    assert last.key == "p_test" and set(last.node_ids) == {"test.p.not_null_mart", "test.p.rel_mart_other"}
    assert set(last.upstream) == {p.key for p in plans[:-1]}


def test_none_drops_tests_and_unselected_parents_drop_edges() -> None:
    plans = plan_tasks(GRAPH, {"model.p.mart", "model.p.other"}, TestBehavior.NONE)
    assert [p.key for p in plans] == ["mart_run", "other_run"] and not edges(plans)


def test_hostile_names_become_safe_distinct_ids() -> None:
    ids = {safe_id(n) for n in ["a b", "a_b", "a/b", "ü", "a.b"]}
    assert len(ids) == 5 and all(all(c.isalnum() or c in "_-" for c in i) for i in ids)
    assert safe_id("orders") == "orders"


def _source(name: str, *, freshness: bool) -> DbtNode:
    rules = {"error_after": {"count": 1, "period": "hour"}} if freshness else None
    return DbtNode(unique_id=f"source.p.raw.{name}", resource_type="source", name=name, package_name="p",
                   original_file_path="", fqn=("p", "raw", name), tags=frozenset(), config={}, depends_on=(),
                   source_name="raw", loaded_at_field="loaded_at" if freshness else None, freshness=rules)


SOURCED = Manifest.from_nodes([
    _source("orders", freshness=True), _source("stores", freshness=False), _source("regions", freshness=False),
    _source("unused", freshness=True),
    node("model.p.eph_orders", "source.p.raw.orders", materialized="ephemeral"),
    node("model.p.stg_orders", "model.p.eph_orders"),
    node("model.p.stg_stores", "source.p.raw.stores"),
    node("model.p.stg_regions", "source.p.raw.regions"),
    node("model.p.calendar"),
    node("test.p.not_null_stores_id", "source.p.raw.stores", materialized="test"),
], "p")


def _sources(behavior, *, pruning: bool = False, selected: set[str] | None = None) -> set[str]:
    from cosmos_async.plan import rendered_sources

    chosen = set(SOURCED.nodes) - {u for u in SOURCED.nodes if u.startswith("source.")} if selected is None \
        else selected
    return rendered_sources(SOURCED, chosen, behavior, pruning, everything=selected is None)


def test_source_rendering_behaviors_choose_cosmos_sources() -> None:
    from cosmos_async.constants import SourceRenderingBehavior as S

    raw = "source.p.raw."
    assert _sources(S.NONE) == set()
    assert _sources(S.ALL) == {raw + n for n in ("orders", "stores", "regions", "unused")}
    assert _sources(S.WITH_TESTS_OR_FRESHNESS) == {raw + "orders", raw + "stores", raw + "unused"}
    assert _sources(S.ALL, pruning=True) == {raw + "orders", raw + "stores", raw + "regions"}
    # With selectors, only the sources that feed the selection (through the ephemeral model here).
    assert _sources(S.ALL, selected={"model.p.stg_orders"}) == {raw + "orders"}


def test_a_source_task_feeds_its_readers_and_holds_its_tests() -> None:
    from cosmos_async.constants import SourceRenderingBehavior as S

    selected = set(SOURCED.nodes) - {u for u in SOURCED.nodes if u.startswith("source.")}
    plans = plan_tasks(SOURCED, selected, TestBehavior.AFTER_EACH, _sources(S.WITH_TESTS_OR_FRESHNESS))
    assert {p.key: p.command for p in plans if p.command in ("source", "test")} == {
        "raw_orders_source": "source", "raw_unused_source": "source", "raw_stores.source": "source",
        "raw_stores.test": "test"}
    assert {("raw_orders_source", "stg_orders_run"), ("raw_stores.source", "raw_stores.test"),
            ("raw_stores.test", "stg_stores_run")} <= edges(plans)
    assert not next(p for p in plans if p.key == "calendar_run").upstream
