"""tables.patch requests dbt-bigquery sends, as the SQL the capture records for them (or None: the node runs
through dbt on a worker)."""

from __future__ import annotations

from cosmos_async.dbt.sql_relations import Relation
from cosmos_async.dbt.table_patch import added_columns_sql

TABLE = Relation("p", "d", "orders")
CURRENT = [{"name": "order_id", "type": "INTEGER", "mode": "NULLABLE"}, {"name": "status", "type": "STRING"}]


def test_appended_columns_become_one_alter_per_column_with_googlesql_types() -> None:
    patched = [{"name": "order_id", "type": "INTEGER"}, {"name": "status", "type": "STRING", "mode": "NULLABLE"},
               {"name": "amount", "type": "FLOAT", "mode": "NULLABLE", "description": None},
               {"name": "items", "type": "RECORD", "mode": "REPEATED",
                "fields": [{"name": "sku", "type": "STRING"}, {"name": "n", "type": "INTEGER"}]}]
    assert added_columns_sql(TABLE, CURRENT, patched) == [
        "ALTER TABLE `p`.`d`.`orders` ADD COLUMN IF NOT EXISTS `amount` FLOAT64",
        "ALTER TABLE `p`.`d`.`orders` ADD COLUMN IF NOT EXISTS `items` ARRAY<STRUCT<`sku` STRING, `n` INT64>>",
    ]


def test_a_hostile_column_name_stays_one_quoted_identifier() -> None:
    sql = added_columns_sql(TABLE, CURRENT, [*CURRENT, {"name": "x` STRING; DROP TABLE t; --", "type": "STRING"}])
    assert sql == ["ALTER TABLE `p`.`d`.`orders` ADD COLUMN IF NOT EXISTS `x\\` STRING; DROP TABLE t; --` STRING"]


def test_changes_other_than_appending_nullable_columns_have_no_sql() -> None:
    retyped = [{"name": "order_id", "type": "STRING"}, CURRENT[1]]
    described = [CURRENT[0], {**CURRENT[1], "description": "order status"}]
    required = [*CURRENT, {"name": "amount", "type": "NUMERIC", "mode": "REQUIRED"}]
    ranged = [*CURRENT, {"name": "span", "type": "RANGE", "rangeElementType": {"type": "DATE"}}]
    for patched in (retyped, described, required, ranged, CURRENT[:1]):
        assert added_columns_sql(TABLE, CURRENT, patched) is None, patched
