"""The quick benchmark tier is CI's smoke test: a sample or section that failed must be reported, not averaged."""

from __future__ import annotations

from bench.__main__ import _failures


def test_a_failed_sample_and_a_failed_section_are_both_reported() -> None:
    variants = {"dbt_compile": {"median_s": 5.9}, "ours_setup_file": {"error": "TypeError: state_file()"}}
    doc = {"section_errors": {"triggerer": "RuntimeError: no emulator"},
           "sections": {"setup": [{"models": 10, "variants": variants}]}}
    assert _failures(doc) == ["triggerer: RuntimeError: no emulator",
                              "setup[0].variants.ours_setup_file: TypeError: state_file()"]


def test_a_clean_run_reports_nothing() -> None:
    assert _failures({"section_errors": {}, "sections": {"parse": [{"median_s": 0.02}]}}) == []
