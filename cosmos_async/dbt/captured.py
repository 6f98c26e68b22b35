"""What a capture yields: per node (and per run-hook phase) the statements and load jobs dbt would run.

Plain dataclasses, JSON-crossable (see :mod:`cosmos_async.dbt.capture_cli`); :mod:`cosmos_async.remote` uploads them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from cosmos_async.dbt.sql_relations import Relation
from cosmos_async.errors import CosmosAsyncError


class CaptureError(CosmosAsyncError):
    """dbt could not be run to capture the project's statements."""


@dataclass
class LoadCapture:
    """One load job dbt-bigquery ran with an upload (a seed): its configuration and the uploaded bytes."""

    configuration: dict[str, Any]  # the job's ``configuration`` exactly as sent (``load`` holds the table/schema)
    data: bytes
    after: int  # how many of the node's statements dbt ran before this load


@dataclass
class ScriptCapture:
    """Consecutive statements of a node run as one multi-statement query job, with dbt's job configuration."""

    statements: list[str]
    # What dbt-bigquery put on these statements' jobs (see :func:`replayable_configuration`); {} when unknown.
    configuration: dict[str, Any] = field(default_factory=dict)

    def script(self) -> str:
        """The statements as one BigQuery multi-statement job."""
        return "\n".join(_as_script_statement(s) for s in self.statements)


@dataclass
class NodeCapture:
    """What one node (or one hook phase) would execute."""

    statements: list[str] = field(default_factory=list)
    # Why the node must run through dbt in LOCAL mode instead; None when the statements are complete.
    fallback: str | None = None
    # BigQuery location of the recorded jobs (from dbt's job reference), when known.
    location: str | None = None
    loads: list[LoadCapture] = field(default_factory=list)
    # Relations (and listings) whose state dbt read while compiling this node, in the order first read.
    reads: list[Relation] = field(default_factory=list)
    # Per statement, the job configuration dbt sent with it; None for a statement dbt made through another API
    # (dataset creation, table delete) or recorded before configurations were. Shorter lists mean None.
    configurations: list[dict[str, Any] | None] = field(default_factory=list)
    # Its SQL came from what other nodes of the run build (see run_dependencies): compile it again once they ran.
    after_parents: bool = False

    def script(self) -> str:
        """The statements as one BigQuery multi-statement job (loads left out: see :meth:`steps`)."""
        return ScriptCapture(self.statements).script()

    def configuration(self, i: int) -> dict[str, Any] | None:
        return self.configurations[i] if i < len(self.configurations) else None

    def steps(self) -> list[ScriptCapture | LoadCapture]:
        """The node in dbt's order: runs of statements (one script each) and the loads between them.

        A run is also split where dbt changed the job configuration between two statements, so each script
        carries the configuration dbt gave all of its statements. A statement without one joins its run.
        """
        steps: list[ScriptCapture | LoadCapture] = []
        start = 0
        for load in sorted(self.loads, key=lambda x: x.after):
            if load.after > start:
                steps.extend(self._scripts(start, load.after))
            steps.append(load)
            start = load.after
        if start < len(self.statements) or not steps:
            steps.extend(self._scripts(start, len(self.statements)) or [ScriptCapture([])])
        return steps

    def _scripts(self, start: int, end: int) -> list[ScriptCapture]:
        scripts: list[ScriptCapture] = []
        current: ScriptCapture | None = None
        for i in range(start, end):
            config = self.configuration(i)
            if current is None or (config is not None and current.configuration and config != current.configuration):
                current = ScriptCapture([], dict(config or {}))
                scripts.append(current)
            elif config is not None and not current.configuration:
                current.configuration = dict(config)
            current.statements.append(self.statements[i])
        return scripts


@dataclass
class Capture:
    """The result of one capture run: per-node statements plus the run hooks."""

    nodes: dict[str, NodeCapture]
    on_run_start: NodeCapture
    on_run_end: NodeCapture
    # dbt's invocation id in the statements' job labels (and in query comments that ask for it).
    invocation_id: str = ""


def _as_script_statement(sql: str) -> str:
    body = sql.strip().rstrip(";").strip()
    # DECLARE is only legal at the top of a script or block: give each statement that uses it its own block.
    if re.match(r"^(?:\s|/\*.*?\*/|--[^\n]*\n)*declare\b", body, re.I | re.S):
        return f"BEGIN\n{body};\nEND;"
    return f"{body};"

