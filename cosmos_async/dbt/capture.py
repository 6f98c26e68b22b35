"""Capture, per dbt node, every statement dbt would run on BigQuery, without running any of them.

``dbt build`` runs once against the recording endpoint (:mod:`cosmos_async.dbt.endpoint`), each request is
attributed to its node (:mod:`cosmos_async.dbt.attribution`), and nodes whose SQL came from what other nodes of
the run build are marked to compile later (:mod:`cosmos_async.dbt.run_dependencies`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cosmos_async.config import ProfileConfig
from cosmos_async.dbt.attribution import NodeCallback, Recorder
from cosmos_async.dbt.captured import Capture, CaptureError, NodeCapture
from cosmos_async.dbt.endpoint import recording_endpoint
from cosmos_async.dbt.run_dependencies import mark_run_dependencies

if TYPE_CHECKING:
    from cosmos_async.dbt.shares import Share
    from cosmos_async.project.manifest import Manifest

DEFAULT_BIGQUERY_ENDPOINT = "https://bigquery.googleapis.com"
# Fewer SQL files than this and a second dbt process costs more (its start, its parse) than it takes off.
MIN_SPLIT_SQL_FILES = 150
_IGNORED_DIRS = frozenset({"target", "dbt_packages", "logs", ".git"})
_RESOURCE_TYPES = ("--resource-type", "model", "seed", "snapshot", "test")
# A share names its nodes one by one: no tests added for the models it names (dbt's eager indirect selection).
_EXACT_SELECTION = ("--indirect-selection", "empty")

# dbt-bigquery's words when it finds no credentials (no ADC) or Google refuses them (a bad or revoked key).
_DBT_AUTH_FAILURES = ("Failed to authenticate with supplied credentials", "Unable to generate access token")


def capture_project(project_dir: Path, profile_config: ProfileConfig, *, select: Sequence[str] = (),
                    exclude: Sequence[str] = (), dbt_vars: Mapping[str, Any] | None = None,
                    full_refresh: bool = False, install_deps: bool = False,
                    env: Mapping[str, str] | None = None, sources: Sequence[str] = (),
                    partial_parse: Path | None = None,
                    on_node_captured: NodeCallback | None = None, processes: int = 1) -> Capture:
    """Run ``dbt build`` once against the recording endpoint and return every node's statements.

    ``sources`` (``source:...`` selectors): also run ``dbt source freshness`` for them and record the query
    dbt sends per source (none for a source judged from table metadata). Their freshness verdicts at setup
    time do not matter: the source tasks judge again when they run.
    ``partial_parse``: where dbt's partial-parse state is kept between runs (see :mod:`cosmos_async.dbt.partial_parse`).
    ``on_node_captured``: told of each node as dbt finishes it, so its files can go up while dbt goes on
    (:class:`cosmos_async.remote.RunUpload`); a node retried in a later pass is told again.
    ``processes``: at most this many dbt processes share the nodes (:mod:`cosmos_async.dbt.shares`); the
    others start at once and parse while this one does. Where a split is refused or its parts disagree, the
    capture runs in this process alone, saying why on stdout.

    A node whose capture fails, or that dbt skipped because an upstream capture failed, is retried in a
    further pass on its own; a node that still fails falls back to LOCAL with dbt's message as the reason.
    """
    options = {"select": select, "exclude": exclude, "dbt_vars": dbt_vars, "full_refresh": full_refresh,
               "install_deps": install_deps, "env": env, "partial_parse": partial_parse}
    if processes > 1 and worth_splitting(Path(project_dir)):
        from cosmos_async.dbt.capture_workers import start_workers

        with start_workers(processes - 1, project_dir, profile_config, on_node_captured=on_node_captured,
                           **options) as workers:
            split = _split_capture(project_dir, profile_config, workers, sources=sources,
                                   on_node_captured=on_node_captured, **options)
        if isinstance(split, Capture):
            return split
        print(f"cosmos-async: capturing in one dbt process: {split}", flush=True)
    with _session(project_dir, profile_config, on_node_captured=on_node_captured, **options) as session:
        failed = session.build(select, exclude)
        if sources:
            _capture_freshness(session, list(sources))
    return session.finish(failed)


def capture_share(project_dir: Path, profile_config: ProfileConfig, assignment: Callable[[], Share | None], *,
                  dbt_vars: Mapping[str, Any] | None = None, full_refresh: bool = False,
                  install_deps: bool = False, env: Mapping[str, str] | None = None,
                  partial_parse: Path | None = None, on_node_captured: NodeCallback | None = None,
                  **_: Any) -> Capture:
    """A helper process's part of a split capture: parse, then capture the share ``assignment()`` hands over
    (None or an empty share: nothing). Its reads are left unmarked: the merged capture is marked as a whole."""
    with _session(project_dir, profile_config, dbt_vars=dbt_vars, full_refresh=full_refresh,
                  install_deps=install_deps, env=env, partial_parse=partial_parse,
                  on_node_captured=on_node_captured) as session:
        share = assignment()
        if share is None or not share.unique_ids:
            return Capture({}, NodeCapture(), NodeCapture())
        session.recorder.built_elsewhere = share.listed_relations()
        failed = session.build(share.selectors, (), _EXACT_SELECTION)
    return session.finish(failed, mark=False)


def worth_splitting(project_dir: Path) -> bool:
    """Whether the project has enough SQL for a split capture to pay for starting another dbt (judged before
    parsing, so the helpers can parse at the same time)."""
    count = 0
    for path in project_dir.rglob("*.sql"):
        if not _IGNORED_DIRS.intersection(path.relative_to(project_dir).parts):
            count += 1
            if count >= MIN_SPLIT_SQL_FILES:
                return True
    return False


def _split_capture(project_dir: Path, profile_config: ProfileConfig, workers: Sequence[Any], *,
                   select: Sequence[str], exclude: Sequence[str], sources: Sequence[str],
                   **options: Any) -> Capture | str:
    """The capture split between this process and ``workers``; or why it had to be refused."""
    from cosmos_async.dbt.shares import merge_shares, plan_shares

    with _session(project_dir, profile_config, **options) as session:
        shares = plan_shares(session.parsed, session.selected(select, exclude), 1 + len(workers))
        if isinstance(shares, str):
            return shares
        for worker, share in zip(workers, shares[1:], strict=True):
            worker.assign(share)
        session.recorder.built_elsewhere = shares[0].listed_relations()
        failed = session.build(shares[0].selectors, (), _EXACT_SELECTION)
        if sources:
            _capture_freshness(session, list(sources))
    parts = [session.finish(failed, mark=False)]
    for worker in workers:
        part = worker.result()
        if isinstance(part, str):
            return part
        parts.append(part)
    merged = merge_shares(parts, shares)
    if isinstance(merged, str):
        return merged
    return session.mark(merged)


class _Session:
    """One recording endpoint, one dbt workspace, and the project parsed once in it."""

    def __init__(self, workspace: Any, recorder: Recorder, parsed: Any, target: Mapping[str, Any],
                 profile_config: ProfileConfig, dbt_vars: Mapping[str, Any] | None, full_refresh: bool) -> None:
        self.workspace, self.recorder, self.parsed, self.target = workspace, recorder, parsed, target
        self.profile_config, self.dbt_vars, self.full_refresh = profile_config, dbt_vars, full_refresh

    def selected(self, select: Sequence[str], exclude: Sequence[str]) -> list[str]:
        """The unique ids ``dbt build`` selects with these arguments (dbt's own ``ls``, on the parsed Manifest)."""
        import json

        from cosmos_async.dbt.invoke import node_results

        command = ["ls", *_RESOURCE_TYPES, "--output", "json", "--output-keys", "unique_id",
                   *(["--select", *select] if select else []), *(["--exclude", *exclude] if exclude else [])]
        return [json.loads(line)["unique_id"] for line in node_results(self.workspace, command, self.dbt_vars,
                                                                         self.parsed, ["--log-level", "none"])]

    def build(self, select: Sequence[str], exclude: Sequence[str], flags: Sequence[str] = ()) -> dict[str, str]:
        """``dbt build`` of these nodes, passes over the skipped ones included; the failed ones with dbt's reason."""
        from cosmos_async.dbt.invoke import DbtCommandError, node_outcomes

        base = ["build", "--no-write-json", *_RESOURCE_TYPES, *flags]
        if self.full_refresh:
            base.append("--full-refresh")
        pending_select, pending_exclude = list(select), list(exclude)
        reuse: Any = self.parsed
        failed: dict[str, str] = {}
        while True:
            command = [*base, *(["--select", *pending_select] if pending_select else []),
                       *(["--exclude", *pending_exclude] if pending_exclude else [])]
            try:
                outcomes = node_outcomes(self.workspace, command, self.dbt_vars, [self.recorder.on_event],
                                         manifest=reuse)
            except DbtCommandError as exc:
                if not any(phrase in str(exc) for phrase in _DBT_AUTH_FAILURES):
                    raise
                # dbt's text names the cause but suggests impersonation roles or nothing: say what to change.
                raise CaptureError(f"{_auth_failure(self.profile_config, self.target)}\n{exc}") from None
            self.recorder.first_pass = False
            # A build leaves its nodes compiled in the Manifest (ephemeral CTEs marked injected): a retry pass
            # parses afresh (partial parse makes that cheap) rather than compile on top of that state.
            reuse = None
            failed.update((o.unique_id, o.message) for o in outcomes if o.status == "error")
            skipped = [o for o in outcomes if o.status == "skipped"]
            # A skipped node is retried without its failed parents; a pass that only skips would loop forever.
            if not skipped or len(skipped) == len(outcomes):
                failed.update((o.unique_id, "dbt skipped it after an upstream capture failed") for o in skipped)
                return failed
            pending_select, pending_exclude = [o.selector for o in skipped], []

    def finish(self, failed: Mapping[str, str], mark: bool = True) -> Capture:
        """What was recorded, failed nodes sent to LOCAL with their reason (and, with ``mark``, run-dependent
        nodes marked to compile after their parents)."""
        for unique_id, message in failed.items():
            node = self.recorder.nodes.setdefault(unique_id, NodeCapture())
            node.fallback = node.fallback or f"its statements could not be captured: {message}"
        capture = Capture(self.recorder.nodes, self.recorder.on_run_start, self.recorder.on_run_end,
                          self.recorder.invocation_id)
        return self.mark(capture) if mark else capture

    def mark(self, capture: Capture) -> Capture:
        project = self.recorder.project if self.recorder.project != "unknown" else str(self.target.get("project") or "")
        mark_run_dependencies(capture, _graph(self.parsed), project)
        return capture


@contextmanager
def _session(project_dir: Path, profile_config: ProfileConfig, *, dbt_vars: Mapping[str, Any] | None = None,
             full_refresh: bool = False, install_deps: bool = False, env: Mapping[str, str] | None = None,
             partial_parse: Path | None = None, on_node_captured: NodeCallback | None = None,
             **_: Any) -> Iterator[_Session]:
    from cosmos_async.dbt.invoke import dbt_workspace, environment, parsed_manifest
    from cosmos_async.profiles import run_target

    with environment(env or {}):  # the profile may read env_var()s that ``env`` sets
        target = run_target(profile_config)
    upstream = target.get("api_endpoint") or DEFAULT_BIGQUERY_ENDPOINT
    with recording_endpoint(upstream, on_node_captured) as (url, recorder), dbt_workspace(
        project_dir, profile_config, install_deps=install_deps, env=env,
        target={**target, "api_endpoint": url, "threads": 1}, partial_parse=partial_parse,
    ) as workspace:
        # Parsed once, and no manifest.json / run_results.json written: their JSON cost ~5 % of a capture.
        parsed = parsed_manifest(workspace, dbt_vars)
        yield _Session(workspace, recorder, parsed, target, profile_config, dbt_vars, full_refresh)


def _capture_freshness(session: _Session, sources: list[str]) -> None:
    from cosmos_async.dbt.invoke import node_outcomes

    # Stale or missing sources are no capture failure: the source tasks judge them when they run. Freshness
    # compiles no node, so the parsed Manifest serves it as it is.
    node_outcomes(session.workspace, ["source", "freshness", "--no-write-json", "--select", *sources],
                  session.dbt_vars, [session.recorder.on_event], manifest=session.parsed)


def _graph(parsed: Any) -> Manifest:
    """The graph of dbt's in-memory Manifest: what each node builds (its relation) and what it depends on."""
    from cosmos_async.project.manifest import Manifest, node_from_dict

    nodes = []
    for node in parsed.nodes.values():
        kind = getattr(node.resource_type, "value", node.resource_type)
        nodes.append(node_from_dict({
            "unique_id": node.unique_id, "resource_type": str(kind), "name": node.name,
            "database": node.database, "schema": node.schema, "alias": getattr(node, "alias", None),
            "config": {"materialized": getattr(node.config, "materialized", None)},
            "depends_on": {"nodes": list(getattr(getattr(node, "depends_on", None), "nodes", None) or ())}}))
    return Manifest.from_nodes(nodes, str(getattr(parsed.metadata, "project_name", None) or ""))


def _auth_failure(profile_config: ProfileConfig, target: Mapping[str, Any]) -> str:
    """What failed and what to change when dbt cannot authenticate to BigQuery with the profile's credentials."""
    mapping = profile_config.profile_mapping
    source = (f"connection {mapping.conn_id!r} ({type(mapping).__name__})" if mapping is not None
              else f"target {profile_config.target_name!r} of {profile_config.profiles_yml_filepath}")
    if target.get("method") == "oauth":
        fix = ("it uses Application Default Credentials, so make them available where the setup task runs "
               "(GOOGLE_APPLICATION_CREDENTIALS naming a key file, workload identity, or `gcloud auth "
               "application-default login`), or put a service-account key into the connection's keyfile_dict and "
               "use GoogleCloudServiceAccountDictProfileMapping")
    else:
        fix = ("Google refused its key (deleted, revoked or of another project): create a new key for the service "
               "account and put it in place of the old one")
    return f"dbt could not authenticate to BigQuery with {source}: {fix}."
