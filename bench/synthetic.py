"""Deterministic synthetic dbt projects for benchmarks, with their manifest produced by real ``dbt parse``.

Shape: ``layers`` of models; each model reads 1..``fan_in`` models of earlier layers (the first layer reads
one seed); with ``deep`` one of them is always in the layer just before, so the critical path crosses every layer.
Materializations cycle view / table / incremental; each model gets ``tests_per_model`` tests.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
from pathlib import Path

PROFILE = """synthetic:
  target: dev
  outputs:
    dev:
      type: bigquery
      method: oauth-secrets
      token: "{{ env_var('BIGQUERY_TOKEN', 'anonymous') }}"
      project: "{{ env_var('BIGQUERY_PROJECT', 'demo-proj') }}"
      dataset: "{{ env_var('BIGQUERY_DATASET', 'synthetic') }}"
      api_endpoint: "{{ env_var('BIGQUERY_API_ENDPOINT', 'http://127.0.0.1:9050') }}"
      location: US
      threads: 8
"""
MATERIALIZATIONS = ("view", "table", "incremental")


def write_project(root: Path, models: int, *, seed: int = 7, width: int = 0, fan_in: int = 3,
                  tests_per_model: int = 1, deep: bool = False) -> Path:
    """Write the project under ``root`` (replacing it) and return its directory."""
    rng = random.Random(seed)
    width = width or max(1, int(models ** 0.5))
    if root.exists():
        shutil.rmtree(root)
    (root / "models").mkdir(parents=True)
    (root / "seeds").mkdir()
    (root / "dbt_project.yml").write_text(
        "name: synthetic\nversion: '1.0'\nprofile: synthetic\nconfig-version: 2\n"
        "seeds:\n  synthetic:\n    +column_types: {id: int64, amount: int64}\n"
    )
    (root / "profiles.yml").write_text(PROFILE)
    (root / "seeds" / "source_rows.csv").write_text("id,amount\n" + "".join(f"{i},{i * 3 % 17}\n" for i in range(20)))
    schema = ["version: 2", "models:"]
    for i in range(models):
        layer = i // width
        name = f"model_{i:05d}"
        materialized = MATERIALIZATIONS[i % len(MATERIALIZATIONS)]
        if layer == 0:
            parents = ["{{ ref('source_rows') }}"]
        else:
            pool = range(0, layer * width)
            picks = set(rng.sample(pool, min(len(pool), rng.randint(1, fan_in))))
            if deep and not any(p >= (layer - 1) * width for p in picks):
                picks.add(rng.randrange((layer - 1) * width, layer * width))
            picks = sorted(picks)
            parents = [f"{{{{ ref('model_{p:05d}') }}}}" for p in picks]
        config = f"{{{{ config(materialized='{materialized}'"
        config += ", unique_key='id') }}" if materialized == "incremental" else ") }}"
        union = "\nunion all\n".join(f"select id, amount from {p}" for p in parents)
        body = f"{config}\nselect id, max(amount) + {i % 5} as amount from (\n{union}\n) group by id\n"
        (root / "models" / f"{name}.sql").write_text(body)
        tests = ["not_null", "unique"][:tests_per_model]
        schema += [f"  - name: {name}", "    columns:", "      - name: id", f"        data_tests: [{', '.join(tests)}]"]
    (root / "models" / "schema.yml").write_text("\n".join(schema) + "\n")
    return root


def parse(root: Path) -> Path:
    """Run real ``dbt parse`` and return the manifest path."""
    dbt = Path(sys.executable).with_name("dbt")
    subprocess.run([str(dbt), "parse", "--project-dir", str(root), "--profiles-dir", str(root), "--quiet"],
                   check=True, env={"DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "PATH": "/usr/bin:/bin"})
    return root / "target" / "manifest.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(parse(write_project(args.root, args.models, seed=args.seed)))


if __name__ == "__main__":
    main()
