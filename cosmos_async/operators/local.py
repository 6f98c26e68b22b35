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

    def execute(self, context: Any) -> None:
        run_dbt_command(self.project_dir, self.profile_config, self.command, self.select,
                        indirect_selection=self.indirect_selection, full_refresh=self.full_refresh,
                        dbt_vars=self.dbt_vars, install_deps=self.install_deps, env=self.env)


def run_dbt_command(project_dir: str | Path, profile_config: ProfileConfig, command: str, select: list[str], *,
                    indirect_selection: str | None = None, full_refresh: bool = False,
                    dbt_vars: dict[str, Any] | None = None, install_deps: bool = False,
                    env: dict[str, str] | None = None) -> None:
    """Run ``dbt <command> --select ...`` in-process; raises with dbt's error when it fails."""
    from cosmos_async.dbt_invoke import dbt_workspace, invoke

    args = [command, "--select", *select]
    if indirect_selection:
        args += ["--indirect-selection", indirect_selection]
    if full_refresh and command in _FULL_REFRESH_COMMANDS:
        args.append("--full-refresh")
    with dbt_workspace(Path(project_dir), profile_config, install_deps=install_deps, env=env) as workspace:
        invoke(workspace, args, dbt_vars)
