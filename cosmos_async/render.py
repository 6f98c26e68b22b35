"""DbtDag and DbtTaskGroup: the dbt graph rendered as Airflow tasks, Cosmos-style."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from functools import cached_property
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset, BaseOperator, TaskGroup

from cosmos_async.config import (
    ExecutionConfig,
    ExecutionMode,
    InvocationMode,
    ProfileConfig,
    ProjectConfig,
    RenderConfig,
    check_operator_args,
)
from cosmos_async.config import _reject as reject_unsupported
from cosmos_async.dbt.executable import DbtInvocation
from cosmos_async.errors import ConfigurationError, SelectionError
from cosmos_async.plan import TaskPlan, node_selector, plan_tasks, rendered_sources
from cosmos_async.project.load import load_project
from cosmos_async.project.manifest import DbtNode, Manifest
from cosmos_async.project.select import select_nodes
from cosmos_async.sources import source_check

# operator_args consumed by the dbt invocation or the async tasks rather than passed to BaseOperator.
_TOOLKIT_ARGS = ("install_deps", "full_refresh", "vars", "env", "append_env", "gcp_conn_id", "location", "project",
                 "poll_interval", "start_from_trigger", "remote_target_path", "remote_target_path_conn_id",
                 "dbt_cmd_flags", "dbt_cmd_global_flags", "quiet", "fail_fast", "cancel_query_on_kill",
                 "py_requirements", "py_system_site_packages", "wait_for_parents", "max_concurrent_jobs",
                 "source_freshness_wait")
log = logging.getLogger(__name__)
DBT_DEFAULT_THREADS = 1  # dbt's default when a target sets no threads
# Airflow 3.3 hands each start-from-trigger task the whole serialized DAG and the trigger keeps a copy while it
# waits: at 200 models (401 tasks) all waiting cost 0.9 GB, at 1000 models 22 GB (README: Triggerer load). Beyond
# this many node tasks in one DAG or task group, models wait for the scheduler unless wait_for_parents says so.
TRIGGERER_WAIT_MAX_TASKS = 500
# Trigger rules a model task waiting in the triggerer keeps: it waits for every parent to succeed itself.
_TRIGGERER_RULES = (None, "always", "all_success")


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
        self.manifest: Manifest = load_project(self.project, self.render, self.profile, self.project_dir,
                                               self.execution.dbt_executable_path)
        self.selected = select_nodes(self.manifest, self.render.select, self.render.exclude)
        self.sources = rendered_sources(self.manifest, self.selected, self.render.source_rendering_behavior,
                                        self.render.source_pruning,
                                        everything=not (self.render.select or self.render.exclude))
        self.plans = plan_tasks(self.manifest, self.selected, self.render.test_behavior, self.sources)
        if not self.plans:
            # A DAG without dbt tasks parses, runs and succeeds doing nothing: a typo in a selector would go
            # unnoticed, so refuse it here.
            self.refuse_empty_dag()
        self.plan_by_key = {plan.key: plan for plan in self.plans}

    def refuse_empty_dag(self) -> None:
        """Raise the error for a selection (or project) that renders no dbt task, naming both."""
        manifest = self.project.manifest_path
        read = manifest if manifest is not None and manifest.is_file() else self.project_dir  # as load_project did
        where = f"dbt project {self.manifest.project_name or '?'!r} ({read})"
        if self.selected:
            found = (f"{len(self.selected)} node(s) of {where}, none of which becomes a task (ephemeral models are "
                     f"inlined into their children; tests get none with {self.render.test_behavior})")
        else:
            found = f"no model, seed, snapshot or test of {where}"
        if not (self.render.select or self.render.exclude):
            raise ConfigurationError(f"the DAG would have no dbt tasks: ProjectConfig leads to {found}; point it at "
                                     "the project (or the manifest) that holds your models.")
        chosen = f"RenderConfig(select={self.render.select!r}, exclude={self.render.exclude!r})"
        raise SelectionError(f"{chosen} selects {found}, so the DAG would have no dbt tasks; correct the selectors "
                             "(`dbt ls --select ... --exclude ...` lists what they match) or remove them.")

    @cached_property
    def dbt_kwargs(self) -> dict[str, Any]:
        args = self.operator_args
        return {"full_refresh": bool(args.get("full_refresh", False)),
                "dbt_vars": {**self.project.dbt_vars, **(args.get("vars") or {})},
                "install_deps": bool(args.get("install_deps", self.project.install_dbt_deps)),
                "env": {**self.project.env_vars, **(args.get("env") or {})}}

    @cached_property
    def invocation(self) -> DbtInvocation:
        """How workers start dbt, from ExecutionConfig and operator_args (checked here, at parse)."""
        args, execution = self.operator_args, self.execution
        requirements = tuple(_strings(args, "py_requirements"))
        virtualenv = execution.execution_mode == ExecutionMode.VIRTUALENV
        if virtualenv and not requirements:
            raise ConfigurationError("ExecutionMode.VIRTUALENV needs operator_args={'py_requirements': "
                                     "['dbt-bigquery==<version>']}: the virtualenv dbt runs from.")
        if requirements and not virtualenv:
            # Cosmos LOCAL accepts and ignores them too (seed DAGs carry them over from VIRTUALENV).
            log.warning("operator_args py_requirements / py_system_site_packages only apply with "
                        "ExecutionMode.VIRTUALENV; %s runs the dbt installed next to Airflow%s.",
                        execution.execution_mode, " (for the setup task: ExecutionConfig(async_py_requirements="
                        "...))" if execution.execution_mode == ExecutionMode.AIRFLOW_ASYNC else "")
        subprocess = execution.invocation_mode == InvocationMode.SUBPROCESS
        append_env = bool(args.get("append_env", True))
        if not append_env and not subprocess:
            raise ConfigurationError("operator_args append_env=False needs "
                                     "ExecutionConfig(invocation_mode=InvocationMode.SUBPROCESS): in-process dbt "
                                     "(DBT_RUNNER) always sees the worker's environment.")
        return DbtInvocation(
            subprocess=subprocess, executable=str(execution.dbt_executable_path or "") or None,
            py_requirements=requirements if virtualenv else (),
            py_system_site_packages=bool(args.get("py_system_site_packages", False)), append_env=append_env,
            cancel_query_on_kill=bool(args.get("cancel_query_on_kill", True)))

    @cached_property
    def dbt_flags(self) -> dict[str, list[str]]:
        """Global flags (before the command) and command flags (after it) for dbt runs on workers."""
        args = self.operator_args
        return {"global_flags": ["--quiet"] * bool(args.get("quiet")) + _strings(args, "dbt_cmd_global_flags"),
                "cmd_flags": ["--fail-fast"] * bool(args.get("fail_fast")) + _strings(args, "dbt_cmd_flags")}

    @cached_property
    def airflow_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.operator_args.items() if k not in _TOOLKIT_ARGS}

    def outlets(self, plan: TaskPlan) -> list[Asset]:
        if not self.render.emit_datasets or plan.is_test:
            return []
        assets = (asset_for(self.manifest.nodes[uid]) for uid in plan.node_ids)
        return [a for a in assets if a is not None]

    def build(self, group_id: str | None = None) -> dict[str, BaseOperator]:
        """The tasks, in the current DAG / task group context; ``group_id`` names the DbtTaskGroup (None: DbtDag)."""
        if self.execution.execution_mode in (ExecutionMode.LOCAL, ExecutionMode.VIRTUALENV):
            if self.operator_args.get("source_freshness_wait") is not None:
                raise ConfigurationError(
                    f"operator_args source_freshness_wait needs ExecutionMode.AIRFLOW_ASYNC (the wait happens in "
                    f"the triggerer); {self.execution.execution_mode} runs `dbt source freshness` once on a worker: "
                    "drop it, or use a sensor/retries for late data.")
            return self.wire(self.local_operator)
        return self.build_async(group_id)

    def require_project_dir(self) -> Path:
        if self.project_dir is None:
            raise ConfigurationError(f"{self.execution.execution_mode} needs ProjectConfig(dbt_project_path=...) "
                                     "to run dbt.")
        return self.project_dir

    def local_kwargs(self, plan: TaskPlan) -> dict[str, Any]:
        """What a LOCAL run of this plan's nodes needs (also the fallback of async tasks)."""
        return {"project_dir": self.require_project_dir(), "profile_config": self.profile,
                "command": "source freshness" if plan.command == "source" else plan.command,
                "select": [node_selector(self.manifest.nodes[uid]) for uid in plan.node_ids],
                "invocation": self.invocation, **self.dbt_flags, **self.dbt_kwargs}

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

        if plan.command == "source" and not self.manifest.nodes[plan.node_ids[0]].has_freshness:
            return self.no_op_source(plan)
        return DbtLocalOperator(task_id=plan.task_id, outlets=self.outlets(plan), **self.local_kwargs(plan),
                                **self.airflow_kwargs)

    def no_op_source(self, plan: TaskPlan) -> BaseOperator:
        """A source without freshness rules (rendered by SourceRenderingBehavior.ALL): nothing to check."""
        from airflow.providers.standard.operators.empty import EmptyOperator

        return EmptyOperator(task_id=plan.task_id)

    def build_async(self, group_id: str | None) -> dict[str, BaseOperator]:
        """setup → on-run-start → node tasks → on-run-end (when the project has such hooks) → teardown."""
        from cosmos_async.operators.bigquery import DbtBigQueryAsyncOperator
        from cosmos_async.operators.setup import DbtAsyncSetupOperator
        from cosmos_async.operators.teardown import DbtAsyncTeardownOperator
        from cosmos_async.remote import HOOK_IDS, RemoteTarget

        args = self.operator_args
        toolkit = sorted(set(self.execution.setup_operator_args) & set(_TOOLKIT_ARGS))
        if toolkit:
            raise ConfigurationError(f"ExecutionConfig(setup_operator_args=...) takes Airflow task arguments (queue, "
                                     f"pool, retries, ...); {', '.join(toolkit)} belong in operator_args.")
        remote = RemoteTarget.from_config(args.get("remote_target_path"), args.get("remote_target_path_conn_id"))
        settings = async_settings(self.profile, args, self.execution.execution_mode, len(self.plans))
        node_airflow_kwargs = self.airflow_kwargs
        # Two DbtTaskGroups of one DAG run each keep their files apart (their own setup, index and teardown).
        remote_kwargs = {"remote_target_path": remote.url, "remote_target_path_conn_id": remote.conn_id,
                         "dbt_group_id": group_id}

        def node_task(task_id: str, nodes: list[dict[str, Any]], fallback: dict[str, Any] | None,
                      **extra: Any) -> BaseOperator:
            labels = {"dbt_project": self.manifest.project_name, "dbt_node": nodes[0]["name"]}
            return DbtBigQueryAsyncOperator(task_id=task_id, nodes=nodes, local_fallback=fallback, labels=labels,
                                            **{**settings, **extra}, **remote_kwargs, **node_airflow_kwargs)

        def make(plan: TaskPlan) -> BaseOperator:
            if plan.command == "source" and not self.manifest.nodes[plan.node_ids[0]].has_freshness:
                return self.no_op_source(plan)
            nodes = [self.async_node(uid) for uid in plan.node_ids]
            return node_task(plan.task_id, nodes, self.local_kwargs(plan), outlets=self.outlets(plan))

        setup = DbtAsyncSetupOperator(
            task_id="dbt_setup_async", project_dir=self.require_project_dir(), profile_config=self.profile,
            node_ids=sorted({uid for plan in self.plans for uid in plan.node_ids}), select=self.render.select,
            exclude=self.render.exclude, py_requirements=self.execution.async_py_requirements,
            dbt_executable_path=self.execution.dbt_executable_path,
            sources=[node_selector(self.manifest.nodes[uid]) for uid in sorted(self.sources)
                     if self.manifest.nodes[uid].has_freshness], **remote_kwargs,
            **self.dbt_kwargs, **{**node_airflow_kwargs, **self.execution.setup_operator_args},
        ).as_setup()
        # Airflow requires all_success right after a setup task: one scheduler hop here. Waiting in the triggerer,
        # the run's other tasks are all deferred at its start and Airflow creates their triggers one at a time
        # (each deserializes the whole DAG): a deferred on-run-start would queue behind all of them, so its short
        # jobs are awaited on the worker the scheduler hands it.
        start = node_task("dbt_on_run_start", [{"id": HOOK_IDS["on-run-start"], "kind": "hook",
                                                "name": "on-run-start"}], None, wait_for_parents="scheduler",
                          await_on_worker=settings["wait_for_parents"] == "triggerer")
        tasks = self.wire(make)
        roots = [t for key, t in tasks.items() if not self.plan_by_key[key].upstream]
        leaves = [t for t in tasks.values() if not t.downstream_list]
        setup >> start >> roots
        teardown = DbtAsyncTeardownOperator(task_id="dbt_teardown_async", **remote_kwargs)
        last: list[BaseOperator] = leaves or [start]
        hooks_end: dict[str, BaseOperator] = {}
        if "on-run-end" in self.manifest.hooks:
            # dbt runs on-run-end whatever the models did. As a teardown it runs after failures too, yet a failed
            # model still fails the DAG run (Airflow leaves teardowns out of the run's state).
            end = node_task("dbt_on_run_end", [{"id": HOOK_IDS["on-run-end"], "kind": "hook",
                                                "name": "on-run-end"}], None, wait_for_parents="scheduler")
            last >> end.as_teardown(setups=setup)
            last = [end]
            hooks_end["dbt_on_run_end"] = end
        last >> teardown.as_teardown(setups=setup)
        # Airflow leaves a teardown whose setup failed upstream_failed (all_done_setup_success), yet a setup that
        # failed half-way through its upload has left files of this run; deleting none when it wrote none is fine.
        teardown.trigger_rule = "all_done"
        return {"dbt_setup_async": setup, "dbt_on_run_start": start, **tasks, **hooks_end,
                "dbt_teardown_async": teardown}

    def async_node(self, unique_id: str) -> dict[str, Any]:
        node = self.manifest.nodes[unique_id]
        entry = {"id": unique_id, "kind": node.resource_type, "name": node.label}
        if node.resource_type == "test":
            entry["severity"] = str(node.config.get("severity") or "error").lower()
        if node.resource_type == "source":
            entry.update(source_check(node, self.operator_args.get("source_freshness_wait")))
        return entry


def _strings(operator_args: dict[str, Any], name: str) -> list[str]:
    """A list-of-strings operator_arg; a bare string is refused (dbt would get it one character at a time)."""
    value = operator_args.get(name) or []
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ConfigurationError(f"operator_args {name} must be a list of strings, e.g. {name}=['--threads', '4'];"
                                 f" got {value!r}.")
    return list(value)


def async_settings(profile: ProfileConfig, operator_args: dict[str, Any],
                   mode: ExecutionMode = ExecutionMode.AIRFLOW_ASYNC, node_tasks: int = 0) -> dict[str, Any]:
    """Credentials, project, location and polling for AIRFLOW_ASYNC tasks: operator_args, then profile, then [cosmos].

    The triggers authenticate with ``operator_args['gcp_conn_id']``, else the profile mapping's connection, else
    the profiles.yml target itself (only its reference travels: the triggerer reads and renders the file).
    """
    from cosmos_async.config import cosmos_setting
    from cosmos_async.profiles import check_async_target

    mapping = profile.profile_mapping
    profile_args = getattr(mapping, "profile_args", {}) or {}
    conn_id = operator_args.get("gcp_conn_id") or getattr(mapping, "conn_id", None)
    start = operator_args.get("start_from_trigger")
    if start is None:
        start = str(cosmos_setting("start_from_trigger", "True")).lower() == "true"
    wait = _wait_for_parents(operator_args, mode, bool(start), node_tasks)
    jobs = operator_args.get("max_concurrent_jobs") or cosmos_setting("max_concurrent_jobs", "")
    if not jobs and wait == "triggerer":
        # Waiting in the triggerer, every ready model would submit at once: dbt's threads bound them instead.
        # Scheduler-gated runs keep main's behaviour (no cap) unless the user sets one.
        jobs = profile_threads(profile)
    settings: dict[str, Any] = {
        "poll_interval": float(operator_args.get("poll_interval") or cosmos_setting("poll_interval", "2.0")),
        "start_from_trigger": bool(start),
        "wait_for_parents": wait,
        "max_jobs": int(jobs) if jobs else None,
        "parent_check_interval": float(cosmos_setting("parent_check_interval", "1.0") or 1.0),
    }
    if not conn_id:
        # project, execution_project and location come from the target as the triggerer renders it.
        return {**settings, "gcp_conn_id": None, "dbt_target": check_async_target(profile).to_kwargs(),
                "project": operator_args.get("project"), "location": operator_args.get("location")}
    return {
        **settings,
        "gcp_conn_id": conn_id,
        "dbt_target": None,
        # dbt's execution_project bills the jobs to another project than the data's (astronomer-cosmos #1933).
        "project": operator_args.get("project") or profile_args.get("execution_project")
        or profile_args.get("project"),
        "location": operator_args.get("location") or profile_args.get("location")
        or cosmos_setting("default_location", "US"),
    }


def _wait_for_parents(operator_args: dict[str, Any], mode: ExecutionMode, start_from_trigger: bool,
                      node_tasks: int) -> str:
    """Who releases a model once its parents succeed: operator_args, then WATCHER's rule, then ``[cosmos]``, else
    the triggerer wherever it can serve (see :data:`TRIGGERER_WAIT_MAX_TASKS`)."""
    from cosmos_async.config import cosmos_setting

    chosen = operator_args.get("wait_for_parents") or (
        "triggerer" if mode == ExecutionMode.WATCHER else cosmos_setting("wait_for_parents", ""))
    rule = operator_args.get("trigger_rule")
    if not chosen:
        # The scheduler where the triggerer cannot serve: a task started on a worker would hold a slot at every
        # look at its parents, a trigger rule other than all_success needs Airflow's, and a large DAG would
        # hold a deserialized copy of itself per waiting task in the triggerer.
        chosen = ("triggerer" if start_from_trigger and rule in _TRIGGERER_RULES
                  and node_tasks <= TRIGGERER_WAIT_MAX_TASKS else "scheduler")
    wait = str(chosen).lower()
    if wait not in ("triggerer", "scheduler"):
        raise ConfigurationError(f"wait_for_parents={wait!r} (operator_args or [cosmos]): use 'triggerer' or "
                                 "'scheduler'.")
    if wait == "triggerer" and rule not in _TRIGGERER_RULES:
        raise ConfigurationError(
            f"operator_args trigger_rule={rule!r} needs wait_for_parents='scheduler': with 'triggerer' model tasks "
            "start with the run and wait for all their parents to succeed themselves.")
    return wait


def profile_threads(profile: ProfileConfig) -> int:
    """dbt's ``threads`` for the profile's target: profile_args, else profiles.yml, else dbt's default."""
    from cosmos_async.profiles import DEFAULT_THREADS

    mapping = profile.profile_mapping
    if mapping is not None:
        return int((getattr(mapping, "profile_args", {}) or {}).get("threads") or DEFAULT_THREADS)
    import yaml

    try:
        profiles = yaml.safe_load(Path(profile.profiles_yml_filepath).read_text()) or {}  # type: ignore[arg-type]
        threads = profiles[profile.profile_name]["outputs"][profile.target_name].get("threads")
        return int(threads) if threads else DBT_DEFAULT_THREADS
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        # Unreadable here or templated (``{{ env_var(...) }}``): dbt itself will say what is wrong at run time.
        return DBT_DEFAULT_THREADS


# Cosmos DbtDag / DbtTaskGroup arguments without a counterpart here; Airflow would report them as unknown kwargs.
_COSMOS_ONLY_KWARGS = ("on_warning_callback", "task_group")


def _reject_cosmos_only(owner: str, kwargs: dict[str, Any]) -> None:
    reject_unsupported(owner, {k: kwargs[k] for k in _COSMOS_ONLY_KWARGS if k in kwargs})


class DbtDag(DAG):
    """An Airflow DAG holding one task per selected dbt node (the Cosmos ``DbtDag`` interface)."""

    def __init__(self, project_config: ProjectConfig, profile_config: ProfileConfig | None = None,
                 execution_config: ExecutionConfig | None = None, render_config: RenderConfig | None = None,
                 operator_args: dict[str, Any] | None = None, **dag_kwargs: Any) -> None:
        _reject_cosmos_only("DbtDag", dag_kwargs)
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
        _reject_cosmos_only("DbtTaskGroup", group_kwargs)
        super().__init__(group_id=group_id, **group_kwargs)
        renderer = _Renderer(project_config, profile_config, execution_config, render_config, operator_args)
        # DbtTaskGroup(dag=...) outside a `with dag:` block, as Cosmos allows: the tasks need that DAG's context.
        with self.dag if self.dag is not None else nullcontext(), self:
            self.dbt_tasks = renderer.build(self.group_id)
