"""The issue-13 benchmark's bookkeeping: every runner's job gets its node's duration, and gaps are measured from
the jobs a node really waits for."""

from bench.scheduling import NodeClock, gaps, node_durations, waits_for

MANIFEST = {"nodes": {
    "model.p.a": {"resource_type": "model", "name": "a", "alias": "a", "depends_on": {"nodes": []}},
    "model.p.b": {"resource_type": "model", "name": "b", "alias": "b", "depends_on": {"nodes": ["model.p.a"]}},
    "test.p.not_null_a_id": {"resource_type": "test", "name": "t", "depends_on": {"nodes": ["model.p.a"]}},
    "test.p.rel_a_b": {"resource_type": "test", "name": "r", "depends_on": {"nodes": ["model.p.a", "model.p.b"]}},
}}


def test_durations_are_seeded_per_node_and_capped() -> None:
    first, again = node_durations(MANIFEST), node_durations({"nodes": {
        **MANIFEST["nodes"], "model.p.z": {"resource_type": "model", "depends_on": {"nodes": []}}}})
    assert {k: again[k] for k in first} == first  # adding a node leaves the others' durations alone
    assert all(0 < d <= 0.5 for d in node_durations(MANIFEST, median=3.0, cap=0.5).values())


def test_a_job_is_named_by_dbt_comment_else_by_the_table_it_writes() -> None:
    clock = NodeClock({"model.p.a": 4.0, "model.p.b": 2.0}, {"a": "model.p.a", "b": "model.p.b"})
    commented = '/* {"app": "dbt", "node_id": "model.p.b"} */ create or replace view `x`.`y`.`b` as select 1'
    bare = "create or replace table `demo-proj`.`ds`.`a__dbt_tmp` as select 1"
    assert clock({"query": {"query": commented}}) == ("model.p.b", 0.0)  # instant until told otherwise
    clock.instant = False
    assert clock({"query": {"query": commented}}) == ("model.p.b", 2.0)
    assert clock({"query": {"query": bare}}) == ("model.p.a", 4.0)
    assert clock({"query": {"query": "select 1"}}) == (None, 0.0)


def test_gap_counts_from_the_parent_and_its_own_tests_not_from_shared_tests() -> None:
    waits = waits_for(MANIFEST)
    assert waits["model.p.b"] == {"model.p.a", "test.p.not_null_a_id"}
    timeline = [{"name": "model.p.a", "submitted": 0.0, "done": 3.0},
                {"name": "test.p.not_null_a_id", "submitted": 3.1, "done": 4.0},
                {"name": "model.p.b", "submitted": 4.25, "done": 6.0},
                {"name": "test.p.rel_a_b", "submitted": 6.1, "done": 7.0}]
    assert gaps(timeline, waits) == [0.25]
