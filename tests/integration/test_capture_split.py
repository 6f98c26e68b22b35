"""A capture split between two dbt processes on the BigQuery emulator: exactly what one process records, and
where a split could change what dbt generates, one process, saying why.

(The introspection flow through a split capture, twice with a change between, against ``dbt build``: the
``split_between_two_dbt_processes`` case of tests/integration/test_stale_sql.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.synthetic import write_project
from cosmos_async.config import ProfileConfig
from cosmos_async.dbt import capture
from cosmos_async.dbt.capture_cli import encode


@pytest.fixture
def project(tmp_path: Path, bigquery_emulator, monkeypatch: pytest.MonkeyPatch, request) -> Path:
    monkeypatch.setenv("BIGQUERY_API_ENDPOINT", bigquery_emulator.endpoint)
    monkeypatch.setenv("BIGQUERY_DATASET", f"split_{request.node.name[-30:].replace('[', '_').replace(']', '')}")
    monkeypatch.setattr(capture, "MIN_SPLIT_SQL_FILES", 1)  # the project is far below the size where a split pays
    return write_project(tmp_path / "synthetic", 12, seed=4)


def _captured(project: Path, processes: int) -> dict:
    """The capture as JSON, dbt's invocation id (each capture has its own) made comparable."""
    profile = ProfileConfig(profile_name="synthetic", target_name="dev", profiles_yml_filepath=project / "profiles.yml")
    result = capture.capture_project(project, profile, processes=processes)
    assert result.invocation_id
    return json.loads(json.dumps(encode(result)).replace(result.invocation_id, "<invocation>"))


def test_split_capture_records_what_one_process_records(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    split = _captured(project, 2)
    out = capsys.readouterr().out
    assert "[capture 2]" in out and "capturing in one dbt process" not in out
    alone = _captured(project, 1)
    assert split["nodes"] == alone["nodes"] and len(alone["nodes"]) == 25  # 12 models, 12 tests, the seed
    assert split["on_run_start"] == alone["on_run_start"] and split["on_run_end"] == alone["on_run_end"]


@pytest.mark.parametrize(("change", "reason"), [
    ("on-run-end: [\"create or replace table {{ target.schema }}.run_audit as select {{ results | length }} as n\"]",
     "the processes recorded different on-run-end statements"),
    ("on-run-start: [\"create or replace table {{ target.schema }}.selection as select "
     "{{ selected_resources | length }} as n\"]", "the project's code reads selected_resources"),
], ids=["hook_counts_results", "hook_reads_selected_resources"])
def test_a_split_that_would_change_the_sql_captures_in_one_process(
        project: Path, capsys: pytest.CaptureFixture[str], change: str, reason: str) -> None:
    with (project / "dbt_project.yml").open("a") as config:
        config.write(change + "\n")
    attempted = _captured(project, 2)
    assert f"cosmos-async: capturing in one dbt process: {reason}" in capsys.readouterr().out
    assert attempted == _captured(project, 1)
