"""LoadMode.DBT_LS_FILE and CUSTOM render the DAG the manifest renders; `dbt ls` at parse names a missing variable.

Real dbt: the dbt ls file is written by `dbt ls --output json` on the example project.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cosmos_async import DbtDag, LoadMode, ProfileConfig, ProjectConfig, RenderConfig
from cosmos_async.errors import ConfigurationError

PROJECT = Path(__file__).resolve().parents[2] / "dev" / "dags" / "dbt" / "corner_shop"
PROFILE = ProfileConfig(profile_name="corner_shop", target_name="dev", profiles_yml_filepath=PROJECT / "profiles.yml")


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__COSMOS__CACHE_DIR", str(tmp_path / "cache"))


def _shape(dag: DbtDag) -> dict[str, tuple[list[str], list[str], str]]:
    """What a user sees of each task: its upstream tasks, the dbt selection it runs and its command."""
    return {task.task_id: (sorted(task.upstream_task_ids), task.select, task.command) for task in dag.tasks}


def _dag(project_config: ProjectConfig, render_config: RenderConfig, **kwargs) -> DbtDag:
    return DbtDag(dag_id="load_modes", schedule=None, project_config=project_config, profile_config=PROFILE,
                  render_config=render_config, **kwargs)


def test_dbt_ls_file_and_custom_render_what_the_manifest_renders(tmp_path: Path) -> None:
    work = tmp_path / "corner_shop"
    shutil.copytree(PROJECT, work, ignore=shutil.ignore_patterns("target", "logs", "manifest.json"))
    listing = subprocess.run([str(Path(sys.executable).with_name("dbt")), "ls", "--output", "json", "--quiet",
                              "--project-dir", str(work), "--profiles-dir", str(work)],
                             capture_output=True, text=True, check=True).stdout
    ls_file = tmp_path / "dbt_ls.json"
    ls_file.write_text(listing)

    from_manifest = _dag(ProjectConfig(dbt_project_path=PROJECT, manifest_path=PROJECT / "manifest.json"),
                         RenderConfig(load_method=LoadMode.DBT_MANIFEST))
    from_file = _dag(ProjectConfig(dbt_project_path=PROJECT),
                     RenderConfig(load_method=LoadMode.DBT_LS_FILE, dbt_ls_path=ls_file))
    custom = _dag(ProjectConfig(dbt_project_path=PROJECT, manifest_path=PROJECT / "manifest.json"),
                  RenderConfig(load_method=LoadMode.CUSTOM))
    expected = _shape(from_manifest)
    assert "orders.run" in expected and "stg_orders.test" in expected
    assert _shape(from_file) == expected
    assert _shape(custom) == expected
    # Selection works on the file's graph as on the manifest's (tags, paths, graph operators).
    selected = RenderConfig(load_method=LoadMode.DBT_LS_FILE, dbt_ls_path=ls_file, select=["path:models/marts"])
    assert _shape(_dag(ProjectConfig(dbt_project_path=PROJECT), selected)).keys() == _shape(_dag(
        ProjectConfig(dbt_project_path=PROJECT, manifest_path=PROJECT / "manifest.json"),
        RenderConfig(select=["path:models/marts"]))).keys()


def test_parse_time_dbt_ls_names_the_missing_variable_and_that_templates_are_run_time(tmp_path: Path) -> None:
    work = tmp_path / "corner_shop"
    shutil.copytree(PROJECT, work, ignore=shutil.ignore_patterns("target", "logs", "manifest.json"))
    (work / "models" / "marts" / "regional.sql").write_text(
        "select '{{ env_var('SHOP_REGION') }}' as region\n")
    # Seed 001: env values templated for run time; CUSTOM without a manifest loads through `dbt ls` at parse.
    operator_args = {"env": {"SHOP_REGION": "{{ var.value.get('shop_region', 'eu') }}"}}
    with pytest.raises(ConfigurationError) as caught:
        _dag(ProjectConfig(dbt_project_path=work), RenderConfig(load_method=LoadMode.CUSTOM),
             operator_args=operator_args)
    message = str(caught.value)
    assert "env var 'SHOP_REGION'" in message
    assert "run-time templates" in message and "ProjectConfig(env_vars=" in message

    dag = _dag(ProjectConfig(dbt_project_path=work, env_vars={"SHOP_REGION": "parse"}),
               RenderConfig(load_method=LoadMode.CUSTOM), operator_args=operator_args)
    assert dag.task_dict["regional_run"].env["SHOP_REGION"] == "{{ var.value.get('shop_region', 'eu') }}"


def test_executable_path_that_is_not_dbt_is_one_clear_error(tmp_path: Path) -> None:
    from cosmos_async.dbt.executable import DbtInvocation

    missing = tmp_path / "venv" / "bin" / "dbt"
    with pytest.raises(ConfigurationError, match=r"dbt_executable_path=.*does not exist.*bin/dbt"):
        DbtInvocation(subprocess=True, executable=str(missing)).runner()
    not_dbt = tmp_path / "bin" / "dbt"
    not_dbt.parent.mkdir()
    (not_dbt.parent / "python").symlink_to(sys.base_prefix + "/bin/python3")  # a Python without dbt-core
    not_dbt.write_text("#!/bin/sh\necho hello\n")
    not_dbt.chmod(0o755)
    with pytest.raises(ConfigurationError, match=r"is not a dbt: its Python .* has no dbt-core"):
        DbtInvocation(subprocess=True, executable=str(not_dbt)).runner()
