"""manifest.json → graph: clear errors for bad files, and the parse cache the dag-processor relies on."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cosmos_async.errors import ManifestError
from cosmos_async.project.manifest import load_manifest

EXAMPLE = Path(__file__).resolve().parents[2] / "dev" / "dags" / "dbt" / "corner_shop" / "manifest.json"


def test_cached_graph_equals_the_parsed_manifest_and_follows_edits(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    shutil.copy(EXAMPLE, manifest)
    fresh = load_manifest(manifest)
    first = load_manifest(manifest, cache=tmp_path / "cache")
    cached = load_manifest(manifest, cache=tmp_path / "cache")
    assert fresh == first == cached
    assert len(list((tmp_path / "cache").glob("graph-*.json"))) == 1

    data = json.loads(manifest.read_text())
    uid = "model.corner_shop.customers"
    data["nodes"][uid]["config"]["materialized"] = "view"
    manifest.write_text(json.dumps(data))
    os.utime(manifest, ns=(1, 1))  # a different mtime even on coarse filesystem clocks
    assert load_manifest(manifest, cache=tmp_path / "cache").nodes[uid].materialized == "view"


def test_corrupt_cache_entry_is_ignored(tmp_path: Path) -> None:
    load_manifest(EXAMPLE, cache=tmp_path)
    for entry in tmp_path.glob("graph-*.json"):
        entry.write_text("{not json")
    assert "model.corner_shop.orders" in load_manifest(EXAMPLE, cache=tmp_path).nodes


@pytest.mark.parametrize("content, message", [
    ("{", "cannot be read as JSON"),
    ('{"hello": 1}', "is not a dbt manifest"),
    ('{"metadata": {"dbt_schema_version": "https://schemas.getdbt.com/dbt/manifest/v4.json"}, "nodes": {}}',
     "schema v4"),
    ('{"metadata": {"dbt_schema_version": "https://schemas.getdbt.com/dbt/manifest/v12.json"}, '
     '"nodes": {"x": {"resource_type": "model"}}}', "is corrupt"),
])
def test_bad_manifest_gets_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(content)
    with pytest.raises(ManifestError, match=message) as err:
        load_manifest(path, cache=tmp_path / "cache")
    assert "regenerate" in str(err.value)
    assert not list((tmp_path / "cache").glob("graph-*")), "a bad manifest must not be cached"


def test_missing_manifest_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest_path"):
        load_manifest(tmp_path / "nope.json")
