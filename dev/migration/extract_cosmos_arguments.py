"""Write the argument names of astronomer-cosmos's public configuration API, read from its source, as JSON.

Run against a checkout of astronomer/astronomer-cosmos at a release tag:

    python -m dev.migration.extract_cosmos_arguments /path/to/astronomer-cosmos astronomer-cosmos-v1.15.1

The output (``cosmos_1_15_arguments.json`` beside this file) is checked in: the migration-table test compares the
table's rows with it, so a row cannot go missing when the names are re-extracted for a newer Cosmos.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).with_name("cosmos_1_15_arguments.json")


def _source(repo: Path, tag: str, path: str) -> ast.Module:
    text = subprocess.run(["git", "-C", str(repo), "show", f"{tag}:{path}"], check=True, capture_output=True,
                          text=True).stdout
    return ast.parse(text)


def _class(module: ast.Module, name: str) -> ast.ClassDef:
    return next(n for n in module.body if isinstance(n, ast.ClassDef) and n.name == name)


def _init_params(cls: ast.ClassDef) -> list[str]:
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    return [a.arg for a in [*init.args.args, *init.args.kwonlyargs] if a.arg != "self"]


def _dataclass_fields(cls: ast.ClassDef) -> list[str]:
    """Annotated class attributes that ``__init__`` takes (``field(init=False)`` ones are left out)."""
    names = []
    for stmt in cls.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        value = stmt.value
        no_init = (isinstance(value, ast.Call) and getattr(value.func, "id", "") == "field"
                   and any(k.arg == "init" and getattr(k.value, "value", True) is False for k in value.keywords))
        if not no_init:
            names.append(stmt.target.id)
    return names


def _enum_members(module: ast.Module, name: str) -> list[str]:
    return [t.id for stmt in _class(module, name).body if isinstance(stmt, ast.Assign)
            for t in stmt.targets if isinstance(t, ast.Name) and not t.id.startswith("_")]


def extract(repo: Path, tag: str) -> dict[str, object]:
    config = _source(repo, tag, "cosmos/config.py")
    constants = _source(repo, tag, "cosmos/constants.py")
    converter = _class(_source(repo, tag, "cosmos/converter.py"), "DbtToAirflowConverter")
    task_group = _class(_source(repo, tag, "cosmos/airflow/task_group.py"), "DbtTaskGroup")
    return {
        "source": f"astronomer/astronomer-cosmos@{tag}",
        "ProjectConfig": _init_params(_class(config, "ProjectConfig")),
        "ProfileConfig": _dataclass_fields(_class(config, "ProfileConfig")),
        "ExecutionConfig": _dataclass_fields(_class(config, "ExecutionConfig")),
        "RenderConfig": _dataclass_fields(_class(config, "RenderConfig")),
        "DbtDag / DbtTaskGroup": [p for p in _init_params(task_group) if p not in ("args", "kwargs")]
        + [p for p in _init_params(converter) if p not in ("args", "kwargs")],
        "enums": {name: _enum_members(constants, name)
                  for name in ("ExecutionMode", "InvocationMode", "LoadMode", "TestBehavior")},
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(extract(Path(sys.argv[1]), sys.argv[2]), indent=1) + "\n")
    print(OUT)
