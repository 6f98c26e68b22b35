"""The README's migration table holds for the code: each Cosmos 1.15 argument has a row, a supported row's sample
value builds a real DbtDag, a refused row raises exactly the message the table quotes, and the README shows
what ``dev/migration/table.py`` renders."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import cosmos_async
from cosmos_async import (
    DbtDag,
    DbtTaskGroup,
    ExecutionConfig,
    GoogleCloudServiceAccountDictProfileMapping,
    ProfileConfig,
    ProjectConfig,
    RenderConfig,
)
from cosmos_async.errors import CosmosAsyncError
from dev.migration.table import (
    COMMON_OPERATOR_ARGS,
    COSMOS_ARGUMENTS,
    ENUM_ARGUMENTS,
    OWNERS,
    README,
    ROWS,
    Row,
    readme_section,
    render,
)

PROJECT = Path(__file__).resolve().parents[2] / "dev" / "dags" / "dbt" / "corner_shop"
# Loading these needs dbt at parse time (a `dbt ls`, or a file of its output): the config object is checked alone.
CONFIG_ONLY = {"load_method=LoadMode.DBT_LS", "load_method=LoadMode.DBT_LS_FILE", "dbt_ls_path"}


def _value(row: Row) -> Any:
    if "=" not in row.argument:
        return row.value
    enum_name = ENUM_ARGUMENTS[(row.owner, row.name)]
    enum = getattr(cosmos_async, enum_name)
    assert hasattr(enum, row.value), f"cosmos_async.{enum_name} lacks {row.value}, which Cosmos 1.15 has"
    return getattr(enum, row.value)


def _dag(row: Row, **kwargs: Any) -> DbtDag:
    kwargs.setdefault("project_config", ProjectConfig(dbt_project_path=PROJECT,
                                                      manifest_path=PROJECT / "manifest.json"))
    kwargs.setdefault("profile_config", _profile())
    return DbtDag(dag_id=f"migration_{abs(hash(row.argument))}", schedule=None, start_date=datetime(2026, 1, 1),
                  **kwargs)


def _profile() -> ProfileConfig:
    return ProfileConfig(profile_name="corner_shop", target_name="dev",
                         profile_mapping=GoogleCloudServiceAccountDictProfileMapping(
                             conn_id="gcp_conn", profile_args={"dataset": "analytics"}))


def build(row: Row, tmp_path: Path) -> object:
    """Use the row's argument the way a DAG file would; return what it built."""
    ls_file = tmp_path / "dbt_ls.json"  # the rows name it "dbt_ls.json"; its content matters only to a DAG
    ls_file.write_text("")

    def given(value: Any) -> dict[str, Any]:
        extra = {k: v for k, v in row.extra.items() if k != "operator_args"}
        chosen = {**extra, **({} if value is None else {row.name: value})}
        return {k: ls_file if v == "dbt_ls.json" else v for k, v in chosen.items()}

    value = _value(row)
    if row.owner == "ProjectConfig":
        base = {"dbt_project_path": PROJECT, "manifest_path": PROJECT / "manifest.json"}
        return _dag(row, project_config=ProjectConfig(**{**base, **given(value)}))
    if row.owner == "ProfileConfig":
        base = {"profile_name": "corner_shop", "target_name": "dev"}
        if row.name == "profiles_yml_filepath":
            config = ProfileConfig(**base, profiles_yml_filepath=PROJECT / "profiles.yml")
        else:
            config = ProfileConfig(**{**base, "profile_mapping": _profile().profile_mapping, **given(value)})
        return _dag(row, profile_config=config)
    if row.owner == "ExecutionConfig":
        return _dag(row, execution_config=ExecutionConfig(**given(value)),
                    operator_args=row.extra.get("operator_args"))
    if row.owner == "RenderConfig":
        config = RenderConfig(**given(value))
        return config if row.argument in CONFIG_ONLY else _dag(row, render_config=config)
    if row.owner == "operator_args":
        return _dag(row, operator_args={row.name: value})
    if row.name in ("group_id", "dag"):
        return DbtTaskGroup(dag=_dag(row), group_id=value or "dbt", profile_config=_profile(),
                            project_config=ProjectConfig(dbt_project_path=PROJECT,
                                                         manifest_path=PROJECT / "manifest.json"))
    return _dag(row, **given(value))


@pytest.fixture(autouse=True)
def _remote(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # AIRFLOW_ASYNC DAGs need a remote target path to parse; file:// needs no connection.
    monkeypatch.setenv("AIRFLOW__COSMOS__REMOTE_TARGET_PATH", f"file://{tmp_path}/remote")


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.owner}:{r.argument}" for r in ROWS])
def test_row_holds_for_the_code(row: Row, tmp_path: Path) -> None:
    if row.supported:
        assert build(row, tmp_path) is not None
        return
    with pytest.raises(CosmosAsyncError) as raised:
        build(row, tmp_path)
    assert str(raised.value) == row.error


def test_every_cosmos_argument_and_value_has_a_row() -> None:
    for owner in OWNERS:
        names = [r.name for r in ROWS if r.owner == owner]
        expected = COMMON_OPERATOR_ARGS if owner == "operator_args" else COSMOS_ARGUMENTS[owner]
        assert set(names) == set(expected), owner
    for (owner, name), enum in ENUM_ARGUMENTS.items():
        values = {r.value for r in ROWS if r.owner == owner and r.name == name}
        assert values == set(COSMOS_ARGUMENTS["enums"][enum]), (owner, name)


def test_readme_shows_the_generated_table() -> None:
    assert readme_section(README.read_text()) == render(), "run: python -m dev.migration.table --write"
