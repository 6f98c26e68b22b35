"""DbtDag and DbtTaskGroup: the dbt graph rendered as Airflow tasks, Cosmos-style."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset, BaseOperator, TaskGroup

from cosmos_async.config import (
    ExecutionConfig,
    ExecutionMode,
    ProfileConfig,
    ProjectConfig,
    RenderConfig,
    check_operator_args,
)
from cosmos_async.errors import ConfigurationError
from cosmos_async.plan import TaskPlan, node_selector, plan_tasks
from cosmos_async.project.load import load_project
from cosmos_async.project.manifest import DbtNode, Manifest
from cosmos_async.project.select import select_nodes

# operator_args consumed by the dbt invocation rather than passed to BaseOperator.
_DBT_ARGS = ("install_deps", "full_refresh", "vars", "env", "append_env")


def asset_for(node: DbtNode) -> Asset | None:
    """The Airflow Asset of the BigQuery table a node builds, named from its real relation."""
    if node.relation_name is None or not (node.database and node.schema):
        return None
    table = node.alias or node.name
    return Asset(name=f"{node.database}.{node.schema}.{table}",
                 uri=f"bigquery://{node.database}/{node.schema}/{table}")


class _Renderer:
    """Builds the tasks of one dbt project inside the current DAG / task group context."""

    def __init__(self, project_config: ProjectConfig, profile_config: ProfileConfig | None,
                 execution_config: ExecutionConfig | None, render_config: RenderConfig | None,
                 operator_args: dict[str, Any] | None) -> None:
        self.project = project_config
        self.profile = profile_config
        self.execution = execution_config or ExecutionConfig()
        self.render = render_config or RenderConfig()
        self.operator_args = check_operator_args(operator_args or {})
        self.project_dir: Path | None = (self.execution.dbt_project_path or self.render.dbt_project_path
                                         or self.project.dbt_project_path)
        if self.profile is None:
            raise ConfigurationError("profile_config is required to run dbt nodes.")
        self.manifest: Manifest = load_project(self.project, self.render, self.profile, self.project_dir)
        self.selected = select_nodes(self.manifest, self.render.select, self.render.exclude)
        self.plans = plan_tasks(self.manifest, self.selected, self.render.test_behavior)

    def dbt_kwargs(self) -> dict[str, Any]:
        args = self.operator_args
        return {"full_refresh": bool(args.get("full_refresh", False)),
                "dbt_vars": {**self.project.dbt_vars, **(args.get("vars") or {})},
                "install_deps": bool(args.get("install_deps", self.project.install_dbt_deps)),
                "env": {**self.project.env_vars, **(args.get("env") or {})}}

    def airflow_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.operator_args.items() if k not in _DBT_ARGS}

    def outlets(self, plan: TaskPlan) -> list[Asset]:
        if not self.render.emit_datasets or plan.is_test:
            return []
        assets = (asset_for(self.manifest.nodes[uid]) for uid in plan.node_ids)
        return [a for a in assets if a is not None]

    def build(self) -> dict[str, BaseOperator]:
        if self.execution.execution_mode == ExecutionMode.LOCAL:
            make = self.local_operator
        else:
            raise ConfigurationError(f"{self.execution.execution_mode} is not implemented yet.")
        return self.wire(make)

    def wire(self, make: Callable[[TaskPlan], BaseOperator]) -> dict[str, BaseOperator]:
        tasks: dict[str, BaseOperator] = {}
        groups: dict[str, TaskGroup] = {}
        for plan in self.plans:
            if plan.group_id is None:
                tasks[plan.key] = make(plan)
            else:
                group = groups.get(plan.group_id)
                if group is None:
                    group = groups[plan.group_id] = TaskGroup(group_id=plan.group_id)
                with group:
                    tasks[plan.key] = make(plan)
            for upstream in plan.upstream:
                tasks[upstream] >> tasks[plan.key]
        return tasks

    def local_operator(self, plan: TaskPlan) -> BaseOperator:
        from cosmos_async.operators.local import DbtLocalOperator

        if self.project_dir is None:
            raise ConfigurationError("ExecutionMode.LOCAL needs ProjectConfig(dbt_project_path=...) to run dbt.")
        return DbtLocalOperator(
            task_id=plan.task_id, project_dir=self.project_dir, profile_config=self.profile,
            command=plan.command, select=[node_selector(self.manifest.nodes[uid]) for uid in plan.node_ids],
            outlets=self.outlets(plan), **self.dbt_kwargs(), **self.airflow_kwargs(),
        )


class DbtDag(DAG):
    """An Airflow DAG holding one task per selected dbt node (the Cosmos ``DbtDag`` interface)."""

    def __init__(self, project_config: ProjectConfig, profile_config: ProfileConfig | None = None,
                 execution_config: ExecutionConfig | None = None, render_config: RenderConfig | None = None,
                 operator_args: dict[str, Any] | None = None, **dag_kwargs: Any) -> None:
        super().__init__(**dag_kwargs)
        renderer = _Renderer(project_config, profile_config, execution_config, render_config, operator_args)
        with self:
            self.dbt_tasks = renderer.build()


class DbtTaskGroup(TaskGroup):
    """A task group holding one task per selected dbt node (the Cosmos ``DbtTaskGroup`` interface)."""

    def __init__(self, group_id: str = "dbt_task_group", project_config: ProjectConfig | None = None,
                 profile_config: ProfileConfig | None = None, execution_config: ExecutionConfig | None = None,
                 render_config: RenderConfig | None = None, operator_args: dict[str, Any] | None = None,
                 **group_kwargs: Any) -> None:
        if project_config is None:
            raise ConfigurationError("DbtTaskGroup needs project_config.")
        super().__init__(group_id=group_id, **group_kwargs)
        renderer = _Renderer(project_config, profile_config, execution_config, render_config, operator_args)
        with self:
            self.dbt_tasks = renderer.build()
