"""The Cosmos-compatible configuration: what users pass, and the clear errors for what is not supported."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cosmos_async import ExecutionConfig, ExecutionMode, ProfileConfig, ProjectConfig, RenderConfig, TestBehavior
from cosmos_async.config import InvocationMode, LoadMode, check_operator_args
from cosmos_async.errors import ConfigurationError, UnsupportedArgumentError


def test_unsupported_cosmos_argument_is_named() -> None:
    with pytest.raises(UnsupportedArgumentError, match="manifest_conn_id"):
        ProjectConfig(dbt_project_path="/x", manifest_conn_id="aws")


def test_unsupported_execution_mode_is_named() -> None:
    with pytest.raises(UnsupportedArgumentError, match="KUBERNETES"):
        ExecutionConfig(execution_mode=ExecutionMode.KUBERNETES)


@pytest.mark.parametrize("kwargs, name", [
    ({"load_method": LoadMode.DBT_LS_CACHE}, "DBT_LS_CACHE"),
    ({"test_behavior": TestBehavior.BUILD}, "BUILD"),
    ({"node_converters": {}}, "node_converters"),
])
def test_unsupported_render_options(kwargs: dict, name: str) -> None:
    with pytest.raises(UnsupportedArgumentError, match=name):
        RenderConfig(**kwargs)


def test_dbt_executable_path_defaults_to_subprocess_and_refuses_dbt_runner() -> None:
    config = ExecutionConfig(dbt_executable_path="/opt/dbt-env/bin/dbt")
    assert config.invocation_mode == InvocationMode.SUBPROCESS
    assert ExecutionConfig().invocation_mode == InvocationMode.DBT_RUNNER
    assert ExecutionConfig(invocation_mode=InvocationMode.SUBPROCESS).dbt_executable_path is None
    with pytest.raises(ConfigurationError, match=r"dbt_executable_path=.*invocation_mode=DBT_RUNNER.*SUBPROCESS"):
        ExecutionConfig(dbt_executable_path="/opt/dbt-env/bin/dbt", invocation_mode=InvocationMode.DBT_RUNNER)


def test_virtualenv_mode_runs_its_own_dbt() -> None:
    assert ExecutionConfig(execution_mode=ExecutionMode.VIRTUALENV).invocation_mode == InvocationMode.SUBPROCESS
    with pytest.raises(ConfigurationError, match=r"VIRTUALENV.*drop dbt_executable_path"):
        ExecutionConfig(execution_mode=ExecutionMode.VIRTUALENV, dbt_executable_path="/x/bin/dbt")


def test_dbt_ls_file_and_its_path_go_together(tmp_path) -> None:
    assert RenderConfig(load_method=LoadMode.DBT_LS_FILE, dbt_ls_path=tmp_path / "ls.json").dbt_ls_path
    assert RenderConfig(load_method=LoadMode.CUSTOM).load_method == LoadMode.CUSTOM
    for kwargs in ({"load_method": LoadMode.DBT_LS_FILE}, {"dbt_ls_path": "ls.json"}):
        with pytest.raises(ConfigurationError, match="DBT_LS_FILE and dbt_ls_path go together"):
            RenderConfig(**kwargs)


def test_operator_args_reject_unknown_keys() -> None:
    assert check_operator_args({"location": "EU", "full_refresh": True}) == {"location": "EU", "full_refresh": True}
    with pytest.raises(UnsupportedArgumentError, match="should_store_compiled_sql"):
        check_operator_args({"should_store_compiled_sql": True})


def test_profile_config_needs_one_source() -> None:
    with pytest.raises(ConfigurationError, match="exactly one"):
        ProfileConfig(profile_name="p", target_name="t")


def test_select_accepts_a_string() -> None:
    assert RenderConfig(select="tag:a", exclude="b").select == ["tag:a"]


def test_provider_declares_cosmos_section(tmp_path) -> None:
    """The [cosmos] options resolve through Airflow's own config, defaults and env vars included."""
    env = {"AIRFLOW_HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
           "AIRFLOW__COSMOS__REMOTE_TARGET_PATH": "gs://bucket/prefix"}
    script = ("from airflow.configuration import conf;"
              "print(conf.get('cosmos','remote_target_path'), conf.get('cosmos','poll_interval'),"
              " conf.getboolean('cosmos','start_from_trigger'))")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["gs://bucket/prefix", "2.0", "True"]


def test_trigger_retry_budget_is_a_cosmos_option(monkeypatch: pytest.MonkeyPatch) -> None:
    from cosmos_async_triggers.rest import RetryPolicy

    assert RetryPolicy().max_total_sleep_s == 30.0
    monkeypatch.setenv("AIRFLOW__COSMOS__HTTP_RETRY_MAX_SLEEP", "2.5")
    assert RetryPolicy().max_total_sleep_s == 2.5
