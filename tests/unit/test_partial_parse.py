"""Where dbt's partial-parse state is kept: one per project, profile, target and the data the target locates."""

from __future__ import annotations

from pathlib import Path

import pytest

from cosmos_async.config import ProfileConfig
from cosmos_async.dbt.partial_parse import state_file

TARGET = {"type": "bigquery", "method": "oauth-secrets", "token": "t1", "project": "p", "dataset": "shop",
          "location": "US", "threads": 4}


@pytest.fixture
def profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ProfileConfig:
    monkeypatch.setenv("AIRFLOW__COSMOS__CACHE_DIR", str(tmp_path / "cache"))
    return ProfileConfig(profile_name="shop", target_name="dev", profiles_yml_filepath=tmp_path / "profiles.yml")


def test_dags_of_one_project_on_other_datasets_keep_their_own_state(tmp_path: Path, profile: ProfileConfig) -> None:
    """Seen in the seed DAGs' runs: variants of one project on different datasets shared one state, so each
    setup or LOCAL fallback found the other's and dbt parsed in full ("profile has changed")."""
    one = state_file(tmp_path, profile, TARGET)
    assert one is not None and one.parent.parent == tmp_path / "cache" / "partial-parse"
    assert state_file(tmp_path, profile, {**TARGET, "dataset": "shop_dev"}) != one
    assert state_file(tmp_path, profile, {**TARGET, "project": "other"}) != one
    # A new token, more threads or the capture's own endpoint is the same deployment: the state is shared, so a
    # LOCAL fallback starts from what this run's setup parsed.
    same = {**TARGET, "token": "t2", "threads": 1, "api_endpoint": "http://127.0.0.1:1"}
    assert state_file(tmp_path, profile, same) == one
    assert state_file(tmp_path / "elsewhere", profile, TARGET) != one


def test_no_state_when_the_cache_is_off(tmp_path: Path, profile: ProfileConfig,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__COSMOS__ENABLE_CACHE_PARTIAL_PARSE", "False")
    assert state_file(tmp_path, profile, TARGET) is None
