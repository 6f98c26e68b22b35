"""The triggerer imports cosmos_async_triggers.bigquery: it must not drag in dbt, BigQuery's client, gcsfs or the
main package (seconds of import time and hundreds of MB across triggerers)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("dbt", "google.cloud.bigquery", "gcsfs", "cosmos_async")
# Airflow itself imports these while loading its configuration (the ``apache_airflow_provider`` entry point of
# the installed cosmos-async distribution): present with or without the trigger module, and import nothing heavy.
AIRFLOW_LOADS = {"cosmos_async", "cosmos_async.provider"}

_PROBE = """
import json, sys
before = set(sys.modules)
import {module}
print(json.dumps({{"loaded": sorted(sys.modules), "new": sorted(set(sys.modules) - before)}}))
"""


def _modules(module: str) -> dict[str, list[str]]:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(module=module)], capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _heavy(names: list[str]) -> set[str]:
    return {m for m in names if any(m == h or m.startswith(h + ".") for h in HEAVY)}


def test_trigger_module_imports_no_heavy_package() -> None:
    trigger = _heavy(_modules("cosmos_async_triggers.bigquery")["loaded"])
    baseline = _heavy(_modules("airflow.triggers.base")["loaded"])
    assert trigger - baseline == set(), f"imported by the trigger module: {sorted(trigger - baseline)}"
    assert trigger <= AIRFLOW_LOADS, f"heavy modules in the triggerer: {sorted(trigger)}"
    assert not any(m.startswith(("dbt", "google.cloud.bigquery", "gcsfs")) for m in trigger)


def test_package_init_is_empty() -> None:
    new = _modules("cosmos_async_triggers")["new"]
    assert [m for m in new if m.startswith("cosmos_async_triggers")] == ["cosmos_async_triggers"]
    assert not any(m.startswith(("airflow", "aiohttp", "google")) for m in new)
