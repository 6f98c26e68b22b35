"""Draw the parse-time chart from a combined results JSON (runs in bench/.venv-cosmos, where matplotlib is)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def draw(results: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = json.loads(results.read_text())["sections"].get("parse", [])
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for name, v in row["variants"].items():
            if "median_s" in v and "dbt_ls" not in name:
                series.setdefault(name, []).append((row["models"], v["median_s"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in sorted(series.items()):
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("models in the synthetic project")
    ax.set_ylabel("DAG-file parse time, median (s)")
    ax.set_title("Parse time with a manifest (lower is better)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    draw(Path(sys.argv[1]), Path(sys.argv[2]))
