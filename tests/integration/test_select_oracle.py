"""select_nodes against real `dbt ls`, case by case, over the corner_shop example project.

All `dbt ls` calls run in one Python subprocess (dbt's programmatic runner, one parse) to keep the suite fast;
dbt ls needs no warehouse.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cosmos_async.errors import ConfigurationError
from cosmos_async.project.manifest import Manifest, load_manifest
from cosmos_async.project.select import select_nodes

PROJECT = Path(__file__).resolve().parents[2] / "dev" / "dags" / "dbt" / "corner_shop"

# (select, exclude): each is compared with `dbt ls --resource-type model seed snapshot test`.
CASES: list[tuple[list[str], list[str]]] = [
    ([], []),                                                  # everything
    (["stg_orders"], []),                                      # bare name, with its tests (eager)
    (["corner_shop.staging.stg_orders"], []),                  # fqn path
    (["staging.stg_orders"], []),                              # fqn without the package
    (["staging"], []),                                         # bare word = directory in the fqn
    (["corner_shop"], []),                                     # bare word = package
    (["package:this"], []),
    (["stg_*"], []),                                           # wildcard on names
    (["fqn:corner_shop.marts.*"], []),
    (["path:models/marts"], []),
    (["path:models/staging/stg_orders.sql"], []),
    (["path:models/*/stg_*.sql"], []),
    (["models/staging"], []),                                  # bare word with a slash = path
    (["raw_orders.csv"], []),                                  # bare file name = file
    (["file:_staging.yml"], []),
    (["tag:finance"], []),
    (["tag:mar*"], []),
    (["config.materialized:incremental"], []),
    (["config.severity:WARN"], []),                            # severity compares case-insensitively
    (["config.schema:marts"], []),
    (["resource_type:test"], []),
    (["resource_type:seed", "resource_type:snapshot"], []),    # list items are a union
    (["test_type:singular"], []),
    (["source:shop_ops"], []),                                 # its tests; sources are never listed
    (["source:shop_ops.shop_stores+"], []),
    (["+daily_revenue"], []),                                  # parents through the ephemeral model
    (["int_order_payments+"], []),
    (["1+orders"], []),
    (["stg_orders+1"], []),
    (["2+customers_snapshot"], []),
    (["@stg_customers"], []),
    (["+assert_payments_match_orders"], []),                   # a test's parents
    (["tag:staging,resource_type:test"], []),                  # test-only selector by intersection
    (["tag:finance,config.materialized:table"], []),
    (["resource_type:model,staging"], []),
    (["stg_orders stg_customers"], []),                        # space-separated words are a union
    (["tag:staging"], ["stg_customers"]),                      # excluding a parent drops its tests too
    (["+customers"], ["resource_type:seed"]),
    ([], ["tag:staging"]),
    (["orders"], ["assert_payments_match_orders"]),
    (["source:*+"], ["stg_stores"]),
    (["path:**"], []),
    (["path:models/**/stg_orders.sql"], []),
    (["path:models/staging/"], []),
    (["stg_orders  stg_customers"], []),                      # a doubled space adds an empty word
    (["stg_orders,"], []),                                     # an empty part empties the intersection
    (["0+orders"], []),
    (["config.docs.show:true"], []),                           # "true" matches a boolean
    (["test_type:data"], []),
    (["access:protected,tag:marts"], []),
    (["no_such_model"], []),                                   # matches nothing: dbt warns only
    (["fct_orders"], []),                                      # an alias is not a name
]
ERROR_CASES = [["foo:bar"], ["@stg_orders+"], ["resource_type:nonsense"]]

_RUNNER = textwrap.dedent("""
    import json, sys
    from dbt.cli.main import dbtRunner
    from dbt_common import behavior_flags
    # Each invocation names its behaviour flags' module with inspect.stack(), which grows slower call after call;
    # the name is only shown in messages, so give it directly.
    behavior_flags.BehaviorFlagRendered._default_source = staticmethod(lambda: "dbt.adapters.bigquery.impl")
    project, target, cases = sys.argv[1], sys.argv[2], json.load(sys.stdin)
    common = ["--project-dir", project, "--profiles-dir", project, "--target-path", target, "--log-path", target]
    parsed = dbtRunner().invoke(["--quiet", "parse", "--no-partial-parse", *common])
    assert parsed.success, parsed.exception
    runner = dbtRunner(manifest=parsed.result)
    answers = {"nodes": sorted(parsed.result.nodes), "cases": []}
    for select, exclude in cases:
        args = ["--quiet", "--log-level-file", "none", "ls", *common, "--output", "json", "--output-keys", "unique_id",
                "--resource-type", "model", "seed", "snapshot", "test"]
        args += ["--select", *select] if select else []
        args += ["--exclude", *exclude] if exclude else []
        res = runner.invoke(args)
        ids = sorted(json.loads(line)["unique_id"] for line in res.result or []) if res.success else None
        answers["cases"].append({"ids": ids, "error": None if res.success else str(res.exception)})
    with open(sys.argv[3], "w") as fh:
        json.dump(answers, fh)
""")


def _key(select: list[str], exclude: list[str]) -> str:
    return json.dumps([select, exclude])


@pytest.fixture(scope="session")
def dbt_ls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Run `dbt ls` for every case in one process; answers by case key, plus the node ids dbt parsed."""
    tmp = tmp_path_factory.mktemp("dbt-ls")
    cases = [[s, e] for s, e in CASES] + [[s, []] for s in ERROR_CASES]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BIGQUERY_", "DBT_"))}
    env["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    out = tmp / "answers.json"
    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(PROJECT), str(tmp / "target"), str(out)],
                          input=json.dumps(cases), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    answers = json.loads(out.read_text())
    by_case = {_key(s, e): a for (s, e), a in zip(cases, answers["cases"], strict=True)}
    return {"cases": by_case, "nodes": answers["nodes"]}


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest(PROJECT / "manifest.json")


def test_committed_manifest_is_current(dbt_ls: dict, manifest: Manifest) -> None:
    """The committed manifest.json holds the nodes dbt parses today; else run dev/scripts/make_manifest.py."""
    committed = {uid for uid, n in manifest.nodes.items() if n.resource_type != "source"}
    parsed = {uid for uid in dbt_ls["nodes"] if not uid.startswith("operation.")}
    assert committed == parsed


@pytest.mark.parametrize(("select", "exclude"), CASES, ids=[_key(s, e) for s, e in CASES])
def test_select_matches_dbt_ls(dbt_ls: dict, manifest: Manifest, select: list[str], exclude: list[str]) -> None:
    expected = dbt_ls["cases"][_key(select, exclude)]
    assert expected["error"] is None, expected["error"]
    assert sorted(select_nodes(manifest, select, exclude)) == expected["ids"]


@pytest.mark.parametrize("select", ERROR_CASES, ids=[s[0] for s in ERROR_CASES])
def test_selectors_dbt_rejects_raise(dbt_ls: dict, manifest: Manifest, select: list[str]) -> None:
    assert dbt_ls["cases"][_key(select, [])]["error"] is not None  # dbt fails on it too
    with pytest.raises(ConfigurationError, match=re.escape(select[0].split(":")[-1])):
        select_nodes(manifest, select, [])


def test_unknown_method_names_the_selector(manifest: Manifest) -> None:
    with pytest.raises(ConfigurationError, match=r"'foo:bar'.*'foo' is not a valid"):
        select_nodes(manifest, ["tag:finance"], ["foo:bar"])
