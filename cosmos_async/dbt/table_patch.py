"""A ``tables.patch`` that only appends columns, as the SQL that does the same.

dbt-bigquery adds columns through the API (``alter_table_add_columns``: an incremental model with
``on_schema_change='append_new_columns'`` or ``'sync_all_columns'``, a snapshot whose select gained a column),
not through SQL. The capture replays SQL only, so such a patch becomes one ``ALTER TABLE … ADD COLUMN`` per new
column (one per statement, which BigQuery and the emulator both accept). Any other change to a table's schema
(types, modes, descriptions, removed or reordered columns) has no such translation here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cosmos_async.dbt.sql_relations import Relation

# Legacy type names the API reports, as GoogleSQL spells them in DDL.
_SQL_TYPES = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL", "RECORD": "STRUCT"}


def added_columns_sql(table: Relation, current: Sequence[Mapping[str, Any]],
                      patched: Sequence[Mapping[str, Any]]) -> list[str] | None:
    """``ALTER TABLE`` statements turning ``current``'s fields into ``patched``'s, or None where the patch does
    more than append nullable columns after the existing ones."""
    if [_shape(f) for f in patched[:len(current)]] != [_shape(f) for f in current]:
        return None
    statements = []
    for field in patched[len(current):]:
        column = _column_type(field)
        if column is None:
            return None
        statements.append(f"ALTER TABLE `{table.project}`.`{table.dataset}`.`{table.table}` "
                          f"ADD COLUMN IF NOT EXISTS {_quoted(field['name'])} {column}")
    return statements


def _shape(field: Mapping[str, Any]) -> tuple[Any, ...]:
    """What must stay as it is of an existing field (the client may spell defaults differently)."""
    return (field.get("name"), str(field.get("type", "")).upper(), field.get("mode") or "NULLABLE",
            field.get("description") or None, tuple(_shape(f) for f in field.get("fields") or []))


def _column_type(field: Mapping[str, Any]) -> str | None:
    """The DDL type of one field, or None for what is left out (REQUIRED, RANGE, options on the column)."""
    if {k for k, v in field.items() if v} - {"name", "type", "mode", "fields"} or \
            (field.get("mode") or "NULLABLE") not in ("NULLABLE", "REPEATED"):
        return None
    kind = str(field.get("type", "")).upper()
    base = _SQL_TYPES.get(kind, kind)
    if base == "STRUCT":
        members = [(_quoted(f["name"]), _column_type(f)) for f in field.get("fields") or []]
        if not members or any(t is None for _, t in members):
            return None
        base = "STRUCT<" + ", ".join(f"{name} {t}" for name, t in members) + ">"
    elif not base.isalnum() or field.get("fields"):
        return None
    return f"ARRAY<{base}>" if field.get("mode") == "REPEATED" else base


def _quoted(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"
