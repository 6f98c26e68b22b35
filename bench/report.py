"""Render the combined results (a dict of sections) as the markdown report bench/results/<date>-<machine>.md."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

ANCHORS = """## Anchors — published elsewhere, NOT measured here

| Source | Figure |
|---|---|
| Cosmos docs (async execution mode), 129-model project | `dbt run` 13 s; Cosmos LOCAL 11 s; Cosmos AIRFLOW_ASYNC 7 s |
| Cosmos docs (async execution mode) | remote SQL upload (one file at a time) ~500 s vs via XCom ~2 s |
| Cosmos watcher-mode post, fhir-dbt-analytics | one `dbt run` ~5 min 30 s vs one dbt call per model ~32 min |
"""


def _s(value: Any, unit: str = "s") -> str:
    return "-" if value is None else f"{value:.3f} {unit}" if isinstance(value, float) else f"{value} {unit}"


def _err(v: dict) -> str:
    lines = [line for line in v["error"].strip().splitlines() if line.strip()]
    return "FAILED: " + (lines[-1] if lines else "?").replace("|", "\\|")[:200]


def _table(title: str, header: str, separator: str, rows: Iterable[list[Any]]) -> list[str]:
    """A markdown section: rows with fewer cells than the header (a variant that failed) get empty cells."""
    width = separator.count("|") - 1
    lines = [title, "", header, separator]
    for cells in rows:
        texts = [str(c) for c in cells] + [""] * (width - len(cells))
        lines.append("|" + "|".join(f" {t} " if t else " " for t in texts) + "|")
    return lines


def _ratio(value: Any) -> str:
    return "-" if value is None else f"{value}x"


def _per_variant(rows: list[dict], measured: Callable[[dict, str, dict], list[Any]]) -> Iterator[list[Any]]:
    """One row per project size and variant; a variant that failed shows its error instead of its figures."""
    for row in rows:
        for name, v in row["variants"].items():
            yield [row["models"], name, *([_err(v)] if "error" in v else measured(row, name, v))]


def parse_table(rows: list[dict]) -> list[str]:
    def measured(row: dict, name: str, v: dict) -> list[Any]:
        return [f"{v['median_s']:.3f} s", f"{v['peak_rss_mb']} MB", v["tasks"],
                _ratio(row["ratio_vs_floor"].get(name)), v["runs"], v["heavy_imports"] or "-"]
    return _table("## 1. DAG parse time (fresh interpreter per sample, warm .pyc; Airflow SDK imported before the "
                  "clock)", "| models | variant | median | peak RSS (process) | tasks | x floor | runs | "
                  "heavy imports |", "|---:|---|---:|---:|---:|---:|---:|---|", _per_variant(rows, measured))


def setup_table(rows: list[dict]) -> list[str]:
    def measured(row: dict, name: str, v: dict) -> list[Any]:
        files = f"{v['files']} ({v['fallbacks']})" if "files" in v else "-"
        return [f"{v['median_s']:.2f} s", _s(v.get("median_capture_s")), _s(v.get("median_upload_s")), files,
                _ratio(row["ratio_vs_dbt_compile"].get(name)),
                _ratio(row.get("ratio_vs_dbt_compile_partial_parse", {}).get(name)), v["runs"]]
    return _table("## 2. Setup: our capture + upload vs plain `dbt compile` (BigQuery emulator; fresh process per "
                  "sample; ours keeps dbt's partial-parse state as the setup task does)",
                  "| models | variant | median wall | capture | upload | files (fallbacks) | x dbt compile "
                  "| x dbt compile (partial parse) | runs |", "|---:|---|---:|---:|---:|---|---:|---:|---:|",
                  _per_variant(rows, measured))


def triggerer_table(rows: list[dict]) -> list[str]:
    def cells() -> Iterator[list[Any]]:
        for r in rows:
            key = [r["trigger"], r["n"], f"{r['hold_s']} s", f"{r['poll_interval_s']} s"]
            if "error" in r:
                yield [*key, _err(r)]
                continue
            events = ", ".join(f"{k}: {v}" for k, v in r["events"].items()).replace("|", "\\|")
            yield [*key, f"{r['wall_s']} s", f"{r['wall_over_hold']}x", f"{r['cpu_s']} s", r["cpu_s_per_1000"],
                   f"{r['rss_before_mb']} MB", f"{r['peak_rss_mb']} MB", r["rss_mb_per_1000"], events]
    return _table("## 3. Triggerer capacity: N concurrent job waits in one asyncio process (latency server holds "
                  "each job RUNNING)", "| trigger | N | hold | poll | wall | wall/hold | CPU | CPU s per 1000 | "
                  "RSS before | peak RSS | RSS MB per 1000 | events |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|", cells())


def trigger_creation_table(rows: list[dict]) -> list[str]:
    def cells() -> Iterator[list[Any]]:
        for r in rows:
            if "error" in r:
                yield [r["models"], _err(r)]
                continue
            yield [r["models"], r["starting_in_triggerer"], f"{r['serialized_kb']} KB", _s(r["per_trigger_s"]),
                   f"{r['per_run_loop_s']} s", f"{r['rss_mb_per_waiting_trigger']} MB",
                   f"{r['all_waiting_rss_gb']} GB"]
    return _table("## 3b. Airflow's cost to create a start-from-trigger trigger (the whole DAG deserialized per "
                  "trigger, and kept while it waits)", "| models | tasks starting in the triggerer | serialized "
                  "DAG | per trigger (median) | loop time per DAG run | RSS per waiting trigger | all waiting at "
                  "once |", "|---:|---:|---:|---:|---:|---:|---:|", cells())


def airflow_table(rows: list[dict]) -> list[str]:
    def cells() -> Iterator[list[Any]]:
        for r in rows:
            if "error" in r:
                yield [r["figure"], r["variant"], r.get("dag", ""), "", _err(r)]
                continue
            yield [r["figure"], r["variant"], r["dag"], r["runs"], _s(r.get("wall_s")), _s(r.get("worker_s")),
                   _s(r.get("worker_s_per_model")), _s(r.get("median_gap_s")), r.get("state", "")]
    return _table("## 4/5. Real Airflow runs (AirflowStack: scheduler, dag-processor, triggerer, api-server; "
                  "LocalExecutor, SQLite)", "| figure | variant | DAG | runs | wall per run | worker slot-s total | "
                  "worker slot-s per model | median scheduling gap | state |",
                  "|---|---|---|---:|---:|---:|---:|---:|---|", cells())


def scheduling_table(rows: list[dict]) -> list[str]:
    from bench.scheduling import NOTES, targets

    def cells() -> Iterator[list[Any]]:
        for r in rows:
            key = [r["kind"], r["project"], r["runner"]]
            if "error" in r and "jobs" not in r:
                yield [*key, _err(r)]
                continue
            yield [*key, r.get("state", "") + (f" ({_err(r)})" if "error" in r else ""), _s(r.get("wall_s")),
                   _s(r.get("exec_s")), _s(r.get("worker_s")), _s(r.get("node_tasks_worker_s")),
                   _s(r.get("median_gap_s")), _s(r.get("p95_gap_s")), f"{r.get('jobs')} ({r.get('held_s')} s held)"]
    return [*_table("## Issue 13: one task per dbt node vs `dbt build --threads 8` and Cosmos, one Airflow stack "
                    "(LocalExecutor, parallelism 8)", "| jobs | project | runner | state | wall (T) | T_exec (T - "
                    "setup) | worker slot-s | node tasks slot-s | median gap | p95 gap | jobs (time held) |",
                    "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|", cells()),
            "", "Targets:", "", *[f"- {t}" for t in targets(rows)], "", "How:", "", *[f"- {n}" for n in NOTES]]


def render(doc: dict[str, Any]) -> str:
    env, cosmos = doc["environment"], doc.get("cosmos_env", {})
    lines = [f"# Benchmarks — {doc['tier']} tier, {doc['date']} on `{doc['machine']}`", "",
             f"Python {env['python']}, {env['cpus']} CPUs, load average at start {env['load_average']} and at end "
             f"{doc.get('load_average_end')} (a shared machine: other jobs ran alongside; treat small differences as "
             f"noise). Ours: {env['versions']}. Cosmos bench env (bench/.venv-cosmos): {cosmos.get('versions')}.",
             f"Bytecode: {env['bytecode']}. Total bench time {doc.get('elapsed_s')} s.", ""]
    sections = doc["sections"]
    if "parse" in sections:
        lines += [*parse_table(sections["parse"]), ""]
    if "setup" in sections:
        lines += [*setup_table(sections["setup"]), ""]
    if "triggerer" in sections:
        lines += [*triggerer_table(sections["triggerer"]), ""]
    if sections.get("trigger_creation"):
        lines += [*trigger_creation_table(sections["trigger_creation"]), ""]
    if sections.get("scheduling"):
        lines += [*scheduling_table(sections["scheduling"]), ""]
    if sections.get("airflow"):
        lines += [*airflow_table(sections["airflow"]), ""]
    for key, message in doc.get("section_errors", {}).items():
        lines += [f"**{key}: could not run** — `{message}`", ""]
    lines += [ANCHORS, "## Notes and what was not measured", "", *[f"- {n}" for n in doc.get("notes", [])], ""]
    if doc.get("chart_error"):
        lines += [f"- {doc['chart_error']}", ""]
    if doc.get("chart"):
        lines += [f"![parse time]({doc['chart']})", ""]
    return "\n".join(lines)
