"""A split capture's shares: patterns that dbt's own fqn matcher resolves to exactly one share's nodes, and the
merge of the processes' captures (run hooks that must agree, one invocation id, nothing extra)."""

from __future__ import annotations

import random

from dbt.graph.selector_methods import QualifiedNameSelectorMethod

from cosmos_async.dbt.captured import Capture, NodeCapture
from cosmos_async.dbt.shares import Share, _cover, merge_shares


def _matches(pattern: str, name: str) -> bool:
    """dbt's answer: does ``--select fqn:<pattern>`` select the node with this flattened fqn?"""
    assert pattern.startswith("fqn:")
    return QualifiedNameSelectorMethod.node_is_match(None, pattern[4:], name.split("."), False)  # type: ignore[arg-type]


def test_patterns_select_exactly_each_share_by_dbts_own_matcher() -> None:
    rng = random.Random(5)
    names = {f"shop.staging.stg_{i:03d}" for i in range(120)} | {f"shop.marts.fct_{i}" for i in range(40)}
    names |= {f"shop.not_null_stg_{i:03d}_id" for i in range(120)}
    # A model named like a folder (a segment prefix of others), odd characters, another package.
    names |= {"shop.staging", "shop.odd[1]", "shop.odd_star*", "shop.bang!", "elementary.models.run_results"}
    leaves = sorted(names)
    for sample in range(20):
        processes = rng.choice([2, 3])
        # Some nodes left out by the user's selection, except in the first sample.
        chosen = [n for n in leaves if sample == 0 or rng.random() < 0.9]
        owner = {n: i * processes // len(chosen) for i, n in enumerate(chosen)}
        patterns = _cover([(n, owner.get(n)) for n in leaves])
        if sample == 0:
            assert sum(map(len, patterns.values())) < len(leaves) / 5  # a few patterns, not one per node
        for number in range(processes):
            selected = {n for n in leaves if any(_matches(p, n) for p in patterns.get(number, []))}
            assert selected == {n for n, o in owner.items() if o == number}


def _phase(*statements: str, configurations: list | None = None) -> NodeCapture:
    return NodeCapture(statements=list(statements), configurations=configurations or [])


def test_merge_keeps_one_invocation_id_and_every_processes_datasets() -> None:
    label = {"labels": {"dbt_invocation_id": "inv-b"}}
    first = Capture({"model.p.a": _phase("create view a /* inv-a */", configurations=[{"labels": {
        "dbt_invocation_id": "inv-a"}}])}, _phase("create schema if not exists `p`.`one`", "select 'hook'"),
        _phase("select 'end'"), "inv-a")
    second = Capture({"model.p.b": _phase("create view b /* inv-b */", configurations=[label])},
                     _phase("create schema if not exists `p`.`two`", "select 'hook'"), _phase("select 'end'"), "inv-b")
    merged = merge_shares([first, second], [Share(["model.p.a"], []), Share(["model.p.b"], [])])
    assert isinstance(merged, Capture)
    assert merged.nodes["model.p.b"].statements == ["create view b /* inv-a */"]
    assert merged.nodes["model.p.b"].configurations == [{"labels": {"dbt_invocation_id": "inv-a"}}]
    assert merged.on_run_start.statements == ["create schema if not exists `p`.`one`",
                                              "create schema if not exists `p`.`two`", "select 'hook'"]
    assert merged.on_run_end.statements == ["select 'end'"]


def test_merge_refuses_hooks_that_differ_and_nodes_outside_a_share() -> None:
    def part(uid: str, end: str, extra: str | None = None) -> Capture:
        nodes = {uid: _phase(f"create view {uid}")}
        if extra:
            nodes[extra] = _phase(f"create view {extra}")
        return Capture(nodes, _phase(), _phase(end), "")

    shares = [Share(["model.p.a"], []), Share(["model.p.b"], [])]
    assert "different on-run-end statements" in merge_shares(
        [part("model.p.a", "insert 1 result"), part("model.p.b", "insert 2 results")], shares)
    assert "model.p.c, which was not in its share" in merge_shares(
        [part("model.p.a", "x", "model.p.c"), part("model.p.b", "x")], shares)
    assert "did not record it" in merge_shares([part("model.p.a", "x"), part("model.p.z", "x")], shares)
