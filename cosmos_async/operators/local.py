"""LOCAL mode: run one dbt command for one task with dbt in-process on the worker."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from cosmos_async.config import ProfileConfig

# dbt accepts --full-refresh only on these commands.
_FULL_REFRESH_COMMANDS = frozenset({"run", "seed", "build"})


class DbtLocalOperator(BaseOperator):
    """Run ``dbt <command> --select <select>`` for one node (or one node's tests) in the worker process."""

    template_fields: Sequence[str] = ("select", "dbt_vars", "env")
    ui_color = "#ffe8d1"

    def __init__(self, *, project_dir: str | Path, profile_config: ProfileConfig, command: str,
                 select: list[str], indirect_selection: str | None = None, full_refresh: bool = False,
                 dbt_vars: dict[str, Any] | None = None, install_deps: bool = False,
                 env: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.project_dir = str(project_dir)
        self.profile_config = profile_config
        self.command = command
        self.select = list(select)
        self.indirect_selection = indirect_selection
        self.full_refresh = full_refresh
        self.dbt_vars = dict(dbt_vars or {})
        self.install_deps = install_deps
        self.env = dict(env or {})

    def dbt_args(self) -> list[str]:
        args = [self.command, "--select", *self.select]
        if self.indirect_selection:
            args += ["--indirect-selection", self.indirect_selection]
        if self.full_refresh and self.command in _FULL_REFRESH_COMMANDS:
            args.append("--full-refresh")
        return args

    def execute(self, context: Any) -> None:
        from cosmos_async.dbt_invoke import dbt_workspace, invoke

        with dbt_workspace(Path(self.project_dir), self.profile_config, install_deps=self.install_deps,
                           env=self.env) as workspace:
            invoke(workspace, self.dbt_args(), self.dbt_vars)
