"""Which BigQuery relations a SQL text reads or writes, from its tokens (comments and strings never count).

Used by the capture to tell whether a node's SQL was generated from something another node of the same run
changes. The answers err towards "reads": a false read costs a LOCAL fallback, a missed one costs stale SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(
    r"(?P<skip>\s+|--[^\n]*|#[^\n]*|/\*.*?(?:\*/|\Z))"
    r"|(?P<string>'''.*?(?:'''|\Z)|\"\"\".*?(?:\"\"\"|\Z)|'(?:\\.|[^'\\])*'?|\"(?:\\.|[^\"\\])*\"?)"
    r"|(?P<quoted>`(?:\\.|[^`\\])*`?)|(?P<word>[A-Za-z0-9_]+)|(?P<punct>.)",
    re.S,
)
# Words after which a relation name follows in a query.
_READ_KEYWORDS = frozenset({"from", "join", "using"})
# Words that end a FROM item instead of naming its alias.
_CLAUSE_WORDS = frozenset({
    "as", "at", "cross", "except", "for", "full", "group", "having", "inner", "intersect", "join", "left", "limit",
    "natural", "on", "order", "outer", "pivot", "qualify", "right", "select", "tablesample", "union", "unpivot",
    "using", "where", "window", "with", "lateral",
})
# Words between CREATE/DROP/ALTER and the name: they say what kind of object it is.
_OBJECT_WORDS = frozenset({
    "or", "replace", "temp", "temporary", "materialized", "external", "snapshot", "table", "view", "schema",
    "function", "aggregate", "procedure", "if", "not", "exists",
})
_WRITE_LEADS = {"insert": {"into"}, "merge": {"into"}, "update": set(), "delete": {"from"},
                "truncate": {"table"}}


@dataclass(frozen=True, order=True)
class Relation:
    """A table (all three parts), a dataset (``table`` None) or a project's datasets (``dataset`` None).

    ``contents`` marks a read of what a dataset or project holds (a listing, INFORMATION_SCHEMA) rather than
    of the object itself.
    """

    project: str
    dataset: str | None = None
    table: str | None = None
    contents: bool = False

    def __str__(self) -> str:
        name = ".".join(p for p in (self.project, self.dataset, self.table) if p is not None)
        if not self.contents:
            return f"`{name}`"
        return f"the {'tables' if self.dataset else 'datasets'} of `{name}`"

    def key(self) -> Relation:
        """The comparable form: case folded (BigQuery names differ by case rarely; erring towards a match is safe)."""
        return Relation(self.project.lower(), self.dataset and self.dataset.lower(),
                        self.table and self.table.lower())

    def holds(self, other: Relation) -> bool:
        """Whether ``other`` (a written relation) lies inside this listing read."""
        if self.dataset is None:  # the project's datasets
            return other.project == self.project and other.dataset is not None and other.table is None
        return other.project == self.project and other.dataset == self.dataset and other.table is not None


@dataclass(frozen=True)
class _Token:
    kind: str  # string / quoted / word / punct
    text: str
    start: int
    end: int

    @property
    def lower(self) -> str:
        return self.text.lower() if self.kind == "word" else ""


def _tokens(sql: str) -> list[_Token]:
    return [_Token(m.lastgroup or "", m.group(), m.start(), m.end()) for m in _TOKEN.finditer(sql)
            if m.lastgroup != "skip"]


def _path(tokens: list[_Token], i: int) -> tuple[list[str], int]:
    """The dotted name starting at ``tokens[i]`` (backticked or bare, ``my-project`` style dashes joined) and
    the index after it; no parts when no name starts there."""
    parts: list[str] = []
    while i < len(tokens):
        token = tokens[i]
        if token.kind == "quoted":
            parts.extend(token.text.strip("`").split("."))
            i += 1
        elif token.kind == "word":
            part, i = token.text, i + 1
            # Unquoted project and table names may hold dashes; only when nothing separates the pieces.
            while (i + 1 < len(tokens) and tokens[i].text == "-" and tokens[i].start == tokens[i - 1].end
                   and tokens[i + 1].kind == "word" and tokens[i + 1].start == tokens[i].end):
                part, i = f"{part}-{tokens[i + 1].text}", i + 2
            parts.append(part)
        else:
            break
        if i < len(tokens) and tokens[i].text == "." and i + 1 < len(tokens) \
                and tokens[i + 1].kind in ("word", "quoted"):
            i += 1
            continue
        break
    return parts, i


def _relation(parts: list[str], project: str, dataset: str | None, ctes: set[str]) -> Relation | None:
    upper = [p.upper() for p in parts]
    if "INFORMATION_SCHEMA" in upper:
        scope = parts[:upper.index("INFORMATION_SCHEMA")]
        if scope and not scope[-1].lower().startswith("region-"):
            return Relation(scope[-2] if len(scope) > 1 else project, scope[-1], contents=True)
        return Relation(scope[0] if len(scope) > 1 else project, contents=True)
    if len(parts) >= 3:
        return Relation(parts[0], parts[1], parts[2])
    if len(parts) == 2:
        return Relation(project, parts[0], parts[1])
    if len(parts) == 1 and dataset is not None and parts[0].lower() not in ctes:
        return Relation(project, dataset, parts[0])
    return None  # an unqualified name without a default dataset: a CTE, an alias or a session temp table


def _cte_names(tokens: list[_Token]) -> set[str]:
    """Names defined as ``name AS (`` (common table expressions), which shadow tables of the default dataset."""
    return {tokens[i].lower for i in range(len(tokens) - 2)
            if tokens[i].kind == "word" and tokens[i + 1].lower == "as" and tokens[i + 2].text == "("}


def relations_read(sql: str, project: str, dataset: str | None = None) -> set[Relation]:
    """Relations a query reads; INFORMATION_SCHEMA views as listings. ``project``/``dataset``: the job's
    defaults for names given with fewer parts.

    Every qualified name counts wherever it stands (a comma join after ON, a UDF call): a column reference
    ``alias.column`` that happens to count too names no table any node builds. Unqualified names count only
    as FROM/JOIN items, and only with a default dataset, since otherwise they are CTEs or aliases.
    """
    tokens = _tokens(sql)
    ctes = _cte_names(tokens)
    found: set[Relation] = set()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.lower in _READ_KEYWORDS:
            i = _read_items(tokens, i + 1, project, dataset, ctes, found)
            continue
        if token.kind in ("word", "quoted") and not (i > 0 and tokens[i - 1].text == "."):
            parts, after = _path(tokens, i)
            if len(parts) >= 2 and (relation := _relation(parts, project, None, ctes)) is not None:
                found.add(relation)
            i = max(after, i + 1)
            continue
        i += 1
    return _narrowed(found, tokens)


def _narrowed(found: set[Relation], tokens: list[_Token]) -> set[Relation]:
    """An INFORMATION_SCHEMA read filtered to named tables (``table_name = 'x'`` / ``in ('x', 'y')``, with no
    OR/NOT that could widen it) reads those tables, not the whole dataset."""
    listings = [r for r in found if r.contents and r.dataset is not None]
    if len(listings) != 1 or any(t.lower in ("or", "not") for t in tokens):
        return found
    names: set[str] = set()
    for i, token in enumerate(tokens):
        if token.lower != "table_name" or (i > 0 and tokens[i - 1].lower == "select"):
            continue
        after = tokens[i + 1:i + 3]
        if len(after) == 2 and after[0].text == "=" and after[1].kind == "string":
            names.add(_literal(after[1].text))
            continue
        if len(after) == 2 and after[0].lower == "in" and after[1].text == "(":
            j = i + 3
            while j < len(tokens) and tokens[j].kind == "string":
                names.add(_literal(tokens[j].text))
                j += 2 if j + 1 < len(tokens) and tokens[j + 1].text == "," else 1
            if j < len(tokens) and tokens[j].text == ")":
                continue
        return found  # table_name compared some other way (LIKE, a column, ...): the whole dataset counts
    if not names:
        return found
    (listing,) = listings
    return (found - {listing}) | {Relation(listing.project, listing.dataset, name) for name in names}


def _literal(text: str) -> str:
    quote = 3 if text[:3] in ("'''", '"""') else 1
    return text[quote:-quote]


def _read_items(tokens: list[_Token], i: int, project: str, dataset: str | None, ctes: set[str],
                found: set[Relation]) -> int:
    """Read the FROM items from ``tokens[i]`` on (``a.b.c x, d.e.f``); return where scanning resumes."""
    while True:
        parts, after = _path(tokens, i)
        if not parts:
            return i
        relation = _relation(parts, project, dataset, ctes)
        if relation is not None:
            found.add(relation)
        i = after
        if i < len(tokens) and tokens[i].kind in ("word", "quoted") and tokens[i].lower not in _CLAUSE_WORDS:
            i += 1  # the item's alias
        elif i + 1 < len(tokens) and tokens[i].lower == "as":
            i += 2
        if i < len(tokens) and tokens[i].text == ",":
            i += 1
            continue
        return i


def _named(parts: list[str], project: str) -> Relation:
    """The table a dotted name of two or three parts names (``project`` when it has two)."""
    return Relation(*parts[:3]) if len(parts) >= 3 else Relation(project, parts[0], parts[1])


def relations_written(sql: str, project: str) -> set[Relation]:
    """Tables and datasets a statement (or script) creates, changes or drops; session temp tables left out."""
    tokens = _tokens(sql)
    found: set[Relation] = set()
    for i, token in enumerate(tokens):
        if i > 0 and tokens[i - 1].text == ".":
            continue  # a column or field named like a keyword
        word = token.lower
        dataset_level = False
        if word in ("create", "drop", "alter"):
            j = i + 1
            while j < len(tokens) and tokens[j].lower in _OBJECT_WORDS:
                dataset_level = dataset_level or tokens[j].lower == "schema"
                j += 1
        elif word in _WRITE_LEADS:
            j = i + 1
            if j < len(tokens) and tokens[j].lower in _WRITE_LEADS[word]:
                j += 1
        else:
            continue
        parts, _ = _path(tokens, j)
        if dataset_level and 1 <= len(parts) <= 2:
            found.add(Relation(parts[0], parts[1]) if len(parts) == 2 else Relation(project, parts[0]))
        elif not dataset_level and len(parts) >= 2:
            found.add(_named(parts, project))
    return found


def created_table_select(sql: str, project: str) -> tuple[Relation, str] | None:
    """The table a single ``CREATE [OR REPLACE] [TEMP] TABLE name ... AS (select)`` statement creates, and its
    select's text; None for any other statement, a script, or a form this cannot take apart with certainty."""
    tokens = _tokens(sql)
    if not tokens or tokens[0].lower != "create":
        return None
    j = 1
    while j < len(tokens) and tokens[j].lower in _OBJECT_WORDS - {"schema", "view", "function", "procedure"}:
        j += 1
    if "table" not in {t.lower for t in tokens[1:j]}:
        return None
    parts, j = _path(tokens, j)
    if len(parts) < 2:
        return None
    depth, opening = 0, None
    for k in range(j, len(tokens)):
        text = tokens[k].text
        if depth == 0 and tokens[k].lower == "as" and k + 1 < len(tokens) and tokens[k + 1].text == "(":
            opening = k + 1
            break
        if text == ";":
            return None
        depth += (text == "(") - (text == ")")
    if opening is None:
        return None
    depth = 0
    for k in range(opening, len(tokens)):
        depth += (tokens[k].text == "(") - (tokens[k].text == ")")
        if depth == 0:
            # Only a closing ``;`` may follow the select: anything else makes this a script.
            if any(t.text != ";" for t in tokens[k + 1:]):
                return None
            table = _named(parts, project)
            return table, sql[tokens[opening].end:tokens[k].start].strip()
    return None
