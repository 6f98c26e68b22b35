"""LOCAL mode: run one dbt command for one task with dbt on the worker (in-process or as a subprocess)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from cosmos_async.config import ProfileConfig
from cosmos_async.dbt.executable import DbtInvocation, DbtSubprocess

# dbt accepts --full-refresh only on these commands.
_FULL_REFRESH_COMMANDS = frozenset({"run", "seed", "build"})


class DbtLocalOperator(BaseOperator):
    """Run ``dbt <command> --select <select>`` for one node (or one node's tests) on the worker."""

    template_fields: Sequence[str] = ("select", "dbt_vars", "env")
    ui_color = "#ffe8d1"

    def __init__(self, *, project_dir: str | Path, profile_config: ProfileConfig, command: str,
                 select: list[str], indirect_selection: str | None = None, full_refresh: bool = False,
                 dbt_vars: dict[str, Any] | None = None, install_deps: bool = False,
                 env: dict[str, str] | None = None, invocation: DbtInvocation | None = None,
                 global_flags: Sequence[str] = (), cmd_flags: Sequence[str] = (), **kwargs: Any) -> None:
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
        self.invocation = invocation or DbtInvocation()
        self.global_flags = list(global_flags)
        self.cmd_flags = list(cmd_flags)
        self._runner: DbtSubprocess | None = None

    def execute(self, context: Any) -> None:
        self._runner = self.invocation.runner(self.log)
        run_dbt_command(self.project_dir, self.profile_config, self.command, self.select,
                        indirect_selection=self.indirect_selection, full_refresh=self.full_refresh,
                        dbt_vars=self.dbt_vars, install_deps=self.install_deps, env=self.env,
                        global_flags=self.global_flags, cmd_flags=self.cmd_flags, runner=self._runner)

    def on_kill(self) -> None:
        if self._runner is not None:
            self._runner.stop()


def run_dbt_command(project_dir: str | Path, profile_config: ProfileConfig, command: str, select: list[str], *,
                    indirect_selection: str | None = None, full_refresh: bool = False,
                    dbt_vars: dict[str, Any] | None = None, install_deps: bool = False,
                    env: dict[str, str] | None = None, global_flags: Sequence[str] = (),
                    cmd_flags: Sequence[str] = (), invocation: DbtInvocation | None = None,
                    runner: DbtSubprocess | None = None, log: logging.Logger | None = None) -> None:
    """Run ``dbt [global flags] <command> --select ... [flags]``; raises with dbt's error when it fails (for
    ``source freshness``: when a source is past its error_after).

    ``runner`` (or one made from ``invocation``) runs dbt as a subprocess; neither runs it in-process.
    """
    from cosmos_async.dbt.invoke import dbt_workspace, environment, invoke
    from cosmos_async.dbt.partial_parse import state_file
    from cosmos_async.profiles import run_target

    if runner is None and invocation is not None:
        runner = invocation.runner(log)
    args = [*command.split(), "--select", *select]  # "source freshness" is two words
    if indirect_selection:
        args += ["--indirect-selection", indirect_selection]
    if full_refresh and command in _FULL_REFRESH_COMMANDS:
        args.append("--full-refresh")
    args += cmd_flags
    with environment(env or {}):  # a profiles.yml may read operator_args env values
        target = run_target(profile_config)
    state = state_file(Path(project_dir), profile_config, target)
    with dbt_workspace(Path(project_dir), profile_config, install_deps=install_deps, env=env, runner=runner,
                       target=target, partial_parse=state) as workspace:
        invoke(workspace, args, dbt_vars, global_flags=global_flags, runner=runner)
