"""Edge cases of select_nodes that the corner_shop oracle does not reach; each states dbt 1.11's behaviour."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from cosmos_async.errors import ConfigurationError, SelectionError
from cosmos_async.project.manifest import DbtNode, Manifest
from cosmos_async.project.select import select_nodes


def node(uid: str, *, path: str = "", deps: tuple[str, ...] = (), tags: tuple[str, ...] = (),
         fqn: tuple[str, ...] | None = None, version: str | None = None, **config: Any) -> DbtNode:
    kind, package, name = uid.split(".")[:3]
    if kind == "source":
        name = uid.split(".")[3]
    return DbtNode(unique_id=uid, resource_type=kind, name=name, package_name=package,
                   original_file_path=path or f"models/{name}.sql", fqn=fqn or (package, name),
                   tags=frozenset(tags), config={"enabled": True, **config}, depends_on=deps, version=version,
                   source_name=uid.split(".")[2] if kind == "source" else None)


SRC = "source.shop.raw.events"
A, B, C, D = (f"model.shop.{n}" for n in "abcd")
T_A = "test.shop.not_null_a"
T_BC = "test.shop.rel_b_c"
T_SRC = "test.shop.source_unique_events"


@pytest.fixture
def manifest() -> Manifest:
    return Manifest.from_nodes([
        node(SRC, path="models/sources.yml", fqn=("shop", "raw", "events")),
        node(A, deps=(SRC,), tags=("x",), meta={"owner": "ana"}, full_refresh=True, group="core",
             access="public", materialized="view"),
        node(B, deps=(A,), path="models/deep/inner/b.sql", materialized="table", tags=("x", "y")),
        node(C, deps=(A,), path="models/deep/c.sql", materialized="table", grants={"roles": ["r1", "r2"]}),
        node(D, deps=(B, C), path="models/d.py", materialized="table"),
        node("analysis.shop.report", deps=(D,), path="analyses/report.sql"),
        node(T_A, deps=(A,), path="models/schema.yml"),
        node(T_BC, deps=(B, C), path="models/schema.yml"),
        node(T_SRC, deps=(SRC,), path="models/sources.yml"),
    ], project_name="shop")


def ids(*uids: str) -> set[str]:
    return set(uids)


def test_depth_zero_and_depth_limits(manifest: Manifest) -> None:
    assert select_nodes(manifest, ["0+d"], []) == ids(D)
    assert select_nodes(manifest, ["1+d"], []) == ids(B, C, D, T_BC)
    assert select_nodes(manifest, ["a+1"], []) == ids(A, B, C, T_A, T_BC)


def test_at_operator_adds_parents_of_children(manifest: Manifest) -> None:
    # @b: b, its child d, and every ancestor of both (c through d), plus their tests.
    assert select_nodes(manifest, ["@b"], []) == ids(A, B, C, D, T_A, T_BC, T_SRC)


def test_analyses_and_sources_are_never_returned(manifest: Manifest) -> None:
    assert select_nodes(manifest, ["+report"], []) == select_nodes(manifest, ["+d"], [])
    assert select_nodes(manifest, ["source:raw"], []) == ids(T_SRC)


def test_a_test_is_excluded_when_any_parent_is(manifest: Manifest) -> None:
    assert select_nodes(manifest, ["b"], []) == ids(B, T_BC)
    assert select_nodes(manifest, ["b", "c"], ["c"]) == ids(B)


def test_config_nested_list_and_boolean_values(manifest: Manifest) -> None:
    assert select_nodes(manifest, ["config.meta.owner:ana"], []) == ids(A, T_A)
    assert select_nodes(manifest, ["config.grants.roles:r2"], []) == ids(C, T_BC)
    assert select_nodes(manifest, ["config.full_refresh:TRUE"], []) == ids(A, T_A)
    assert select_nodes(manifest, ["config.tags:y"], []) == set()  # tags live on the node, not in this config


def test_group_access_and_package(manifest: Manifest) -> None:
    assert select_nodes(manifest, ["group:co*"], []) == ids(A, T_A)
    assert select_nodes(manifest, ["access:public"], []) == ids(A, T_A)
    assert select_nodes(manifest, ["package:sh?p"], []) == select_nodes(manifest, [], [])


def test_path_globs_follow_pathlib(manifest: Manifest) -> None:
    assert select_nodes(manifest, ["path:models/deep"], []) == ids(B, C, T_BC)
    assert select_nodes(manifest, ["path:models/deep/"], []) == ids(B, C, T_BC)
    assert select_nodes(manifest, ["path:models/**/b.sql"], []) == ids(B, T_BC)
    assert select_nodes(manifest, ["path:models/*.py"], []) == ids(D)
    assert select_nodes(manifest, ["path:**"], []) == select_nodes(manifest, [], [])
    with pytest.raises(SelectionError, match="relative"):
        select_nodes(manifest, ["path:/models"], [])


def test_file_method_matches_name_or_stem(manifest: Manifest) -> None:
    assert select_nodes(manifest, ["d.py"], []) == ids(D)
    assert select_nodes(manifest, ["file:d"], []) == ids(D)


def test_words_and_commas(manifest: Manifest) -> None:
    assert select_nodes(manifest, ["a  b"], []) == ids(A, B, T_A, T_BC)  # a doubled space is harmless
    assert select_nodes(manifest, ["tag:x,tag:y"], []) == ids(B, T_BC)
    assert select_nodes(manifest, ["a,"], []) == set()  # an empty part matches nothing, so the intersection is empty
    assert select_nodes(manifest, [" "], []) == set()  # a selector was given: no default "everything"


def test_fqn_prefix_and_wildcards(manifest: Manifest) -> None:
    assert select_nodes(manifest, ["shop.raw.*"], []) == set()  # fqn: never matches sources
    assert select_nodes(manifest, ["fqn:*"], []) == select_nodes(manifest, [], [])
    assert select_nodes(manifest, ["[ab]"], []) == ids(A, B, T_A, T_BC)


def test_versioned_models() -> None:
    v1 = node("model.shop.dim.v1", fqn=("shop", "dim", "v1"), version="1")
    v2 = node("model.shop.dim.v2", fqn=("shop", "dim", "v2"), version="2")
    manifest = Manifest.from_nodes([v1, v2], project_name="shop")
    assert select_nodes(manifest, ["dim"], []) == ids(v1.unique_id, v2.unique_id)
    assert select_nodes(manifest, ["dim_v2"], []) == ids(v2.unique_id)
    assert select_nodes(manifest, ["dim.v1"], []) == ids(v1.unique_id)


def test_disabled_nodes_are_not_in_the_graph() -> None:
    off = node("model.shop.off", deps=("model.shop.base",), enabled=False)
    manifest = Manifest.from_nodes([node("model.shop.base"), off, node("model.shop.top", deps=(off.unique_id,))],
                                   project_name="shop")
    assert select_nodes(manifest, ["+top"], []) == ids("model.shop.top")
    assert select_nodes(manifest, ["off"], []) == set()


@pytest.mark.parametrize(("selector", "message"), [
    ("state:modified", "not supported"),
    ("test_name:unique", "not supported"),
    ("source:a.b.c.d", "invalid source selector"),
    ("test_type:nope", "invalid test_type"),
    ("tags:x", "'tags' is not a valid"),
])
def test_errors_name_the_selector(manifest: Manifest, selector: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        select_nodes(manifest, [selector], [])


def test_a_bad_exclude_fails_even_when_select_matches_nothing(manifest: Manifest) -> None:
    with pytest.raises(ConfigurationError, match="foo"):
        select_nodes(manifest, ["nothing_here"], ["foo:bar"])


def test_a_plain_string_is_refused(manifest: Manifest) -> None:
    with pytest.raises(ConfigurationError, match="list"):
        select_nodes(manifest, "tag:x", [])  # type: ignore[arg-type]


def test_importing_select_does_not_import_dbt() -> None:
    code = "import sys, cosmos_async.project.select; print(sorted(m for m in sys.modules if m.split('.')[0] == 'dbt'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
