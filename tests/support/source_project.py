"""A small dbt project whose models read sources with freshness rules and source tests (issue 16).

Sources (schema ``RAW_DATASET``): ``orders`` (loaded_at_field, error_after 1 h, a filter: rows with id >= 100
do not count), ``payments`` (warn_after 1 h
only), ``customers`` (no loaded_at_field: judged from table metadata, error_after 1 h), ``stores`` (no freshness,
a not_null test), ``regions`` (neither: rendered only with SourceRenderingBehavior.ALL), ``events``
(loaded_at_field, error_after 1 h, and its own wait for late data in ``meta``). ``calendar`` reads no source, so it
must run whatever the sources do.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

PROJECT = "fresh_shop"
MODELS = {
    "stg_orders": "select id, amount from {{ source('raw', 'orders') }}",
    "stg_payments": "select id, order_id from {{ source('raw', 'payments') }}",
    "stg_customers": "select id from {{ source('raw', 'customers') }}",
    "stg_stores": "select id from {{ source('raw', 'stores') }}",
    "stg_regions": "select id from {{ source('raw', 'regions') }}",
    "stg_events": "select id from {{ source('raw', 'events') }}",
    "calendar": "select 1 as day",
}
SOURCES_YML = """\
version: 2
sources:
  - name: raw
    schema: "{{ env_var('RAW_DATASET', 'raw') }}"
    tables:
      - name: orders
        loaded_at_field: loaded_at
        freshness:
          error_after: {count: 1, period: hour}
          filter: "id < 100"
      - name: payments
        loaded_at_field: loaded_at
        freshness:
          warn_after: {count: 1, period: hour}
      - name: customers
        freshness:
          error_after: {count: 1, period: hour}
      - name: stores
        columns:
          - name: id
            data_tests: [not_null]
      - name: regions
      - name: events
        loaded_at_field: loaded_at
        meta:
          cosmos_async:
            freshness_wait: {interval_minutes: 0.05, timeout_minutes: 3}
        freshness:
          error_after: {count: 1, period: hour}
"""
PROFILES_YML = """\
fresh_shop:
  target: dev
  outputs:
    dev:
      type: bigquery
      method: oauth-secrets
      token: anonymous
      project: "{{ env_var('BIGQUERY_PROJECT', 'demo-proj') }}"
      dataset: "{{ env_var('BIGQUERY_DATASET', 'fresh_shop') }}"
      api_endpoint: "{{ env_var('BIGQUERY_API_ENDPOINT', '') }}"
      location: US
      threads: 4
"""


def write_source_project(root: Path) -> Path:
    """Write the project under ``root`` and return its directory."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    (root / "dbt_project.yml").write_text(f"name: {PROJECT}\nversion: '1.0'\nprofile: {PROJECT}\n"
                                          "config-version: 2\nmodel-paths: [models]\n"
                                          "models:\n  fresh_shop:\n    +materialized: table\n")
    (root / "profiles.yml").write_text(PROFILES_YML)
    (root / "models" / "_sources.yml").write_text(SOURCES_YML)
    for name, sql in MODELS.items():
        (root / "models" / f"{name}.sql").write_text(sql + "\n")
    return root


def load_raw(client: Any, dataset: str, *, orders_age: timedelta, payments_age: timedelta,
             stores_null: bool = False, events_age: timedelta = timedelta(hours=30)) -> None:
    """(Re)create the raw tables; ``*_age`` sets how old their newest ``loaded_at`` is."""
    now = datetime.now(timezone.utc)
    client.create_dataset(dataset, exists_ok=True)

    def ts(age: timedelta) -> str:
        return (now - age).strftime("%Y-%m-%d %H:%M:%S")

    statements = [
        f"create or replace table `{dataset}`.orders as select 1 as id, 10 as amount, "
        f"timestamp '{ts(orders_age)}' as loaded_at",
        f"create or replace table `{dataset}`.payments as select 1 as id, 1 as order_id, "
        f"timestamp '{ts(payments_age)}' as loaded_at",
        f"create or replace table `{dataset}`.customers as select 1 as id",
        f"create or replace table `{dataset}`.stores as select {'cast(null as int64)' if stores_null else '1'} as id",
        f"create or replace table `{dataset}`.regions as select 1 as id",
        f"create or replace table `{dataset}`.events as select 1 as id, timestamp '{ts(events_age)}' as loaded_at",
    ]
    for sql in statements:
        client.query(sql).result()


def insert_fresh_order(client: Any, dataset: str, order_id: int = 2) -> None:
    """Late data arrives: an order loaded now."""
    client.query(f"insert into `{dataset}`.orders (id, amount, loaded_at) "
                 f"values ({order_id}, 20, current_timestamp())").result()


def insert_fresh_event(client: Any, dataset: str) -> None:
    """Late data arrives: an event loaded now."""
    client.query(f"insert into `{dataset}`.events (id, loaded_at) values (2, current_timestamp())").result()
