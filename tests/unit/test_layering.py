"""The data path reads one way: project -> render -> setup (capture, upload) -> node tasks -> teardown.

Each module of cosmos_async has a layer; a module imports only from its own layer or lower ones (imports inside
functions and under TYPE_CHECKING count too), so no stage reaches back into one that comes before it in the
wiring. ``render`` is the top: it wires the operators of every stage into a DAG.
"""

from __future__ import annotations

import ast
from pathlib import Path

import cosmos_async

ROOT = Path(cosmos_async.__file__).resolve().parent
# Lowest first. Foundation: settings, profiles and running dbt (the dbt ls fallback of the project stage runs dbt).
LAYERS: list[tuple[str, ...]] = [
    ("errors", "constants", "config", "impersonation", "profiles", "provider", "dbt", "dbt.sql_relations", "dbt.venv",
     "dbt.executable", "dbt.partial_parse", "dbt.invoke"),
    ("project", "project.manifest", "project.select", "project.dbt_ls", "project.load", "plan", "sources"),
    ("dbt.captured", "dbt.attribution", "dbt.column_probe", "dbt.table_patch", "dbt.endpoint",
     "dbt.run_dependencies", "dbt.shares", "dbt.capture", "dbt.capture_cli", "dbt.capture_workers"),
    ("remote",),
    ("operators", "operators.links", "operators.local", "operators.bigquery", "operators.setup",
     "operators.teardown"),
    ("render", "airflow", "airflow.dag", "airflow.task_group", ""),
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n.removeprefix("cosmos_async").removeprefix(".") for n in names
            if n == "cosmos_async" or n.startswith("cosmos_async.")}


def test_every_module_has_a_layer() -> None:
    assert set(_modules()) - set(RANK) == set(), "add the new module to LAYERS in this test"


def test_no_module_imports_a_later_stage() -> None:
    backward = [f"cosmos_async.{module} (layer {RANK[module]}) imports cosmos_async.{imported} "
                f"(layer {RANK[imported]})"
                for module, path in sorted(_modules().items()) for imported in sorted(_imports(path))
                if RANK.get(imported, RANK[module]) > RANK[module]]
    assert backward == []
