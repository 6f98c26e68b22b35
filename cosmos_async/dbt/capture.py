"""Capture, per dbt node, every statement dbt would run on BigQuery, without running any of them.

``dbt build`` runs once against the recording endpoint (:mod:`cosmos_async.dbt.endpoint`), each request is
attributed to its node (:mod:`cosmos_async.dbt.attribution`), and nodes whose SQL came from what other nodes of
the run build are marked to compile later (:mod:`cosmos_async.dbt.run_dependencies`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cosmos_async.config import ProfileConfig
from cosmos_async.dbt.attribution import NodeCallback, Recorder
from cosmos_async.dbt.captured import Capture, CaptureError, NodeCapture
from cosmos_async.dbt.endpoint import recording_endpoint
from cosmos_async.dbt.run_dependencies import mark_run_dependencies

if TYPE_CHECKING:
    from cosmos_async.project.manifest import Manifest

DEFAULT_BIGQUERY_ENDPOINT = "https://bigquery.googleapis.com"

# dbt-bigquery's words when it finds no credentials (no ADC) or Google refuses them (a bad or revoked key).
_DBT_AUTH_FAILURES = ("Failed to authenticate with supplied credentials", "Unable to generate access token")


def capture_project(project_dir: Path, profile_config: ProfileConfig, *, select: Sequence[str] = (),
                    exclude: Sequence[str] = (), dbt_vars: Mapping[str, Any] | None = None,
                    full_refresh: bool = False, install_deps: bool = False,
                    env: Mapping[str, str] | None = None, sources: Sequence[str] = (),
                    partial_parse: Path | None = None,
                    on_node_captured: NodeCallback | None = None) -> Capture:
    """Run ``dbt build`` once against the recording endpoint and return every node's statements.

    ``sources`` (``source:...`` selectors): also run ``dbt source freshness`` for them and record the query
    dbt sends per source (none for a source judged from table metadata). Their freshness verdicts at setup
    time do not matter: the source tasks judge again when they run.
    ``partial_parse``: where dbt's partial-parse state is kept between runs (see :mod:`cosmos_async.dbt.partial_parse`).
    ``on_node_captured``: told of each node as dbt finishes it, so its files can go up while dbt goes on
    (:class:`cosmos_async.remote.RunUpload`); a node retried in a later pass is told again.

    A node whose capture fails, or that dbt skipped because an upstream capture failed, is retried in a
    further pass on its own; a node that still fails falls back to LOCAL with dbt's message as the reason.
    """
    from cosmos_async.dbt.invoke import DbtCommandError, dbt_workspace, environment, node_outcomes, parsed_manifest
    from cosmos_async.profiles import run_target

    with environment(env or {}):  # the profile may read env_var()s that ``env`` sets
        target = run_target(profile_config)
    upstream = target.get("api_endpoint") or DEFAULT_BIGQUERY_ENDPOINT
    failed: dict[str, str] = {}
    with recording_endpoint(upstream, on_node_captured) as (url, recorder), dbt_workspace(
        project_dir, profile_config, install_deps=install_deps, env=env,
        target={**target, "api_endpoint": url, "threads": 1}, partial_parse=partial_parse,
    ) as workspace:
        # Parsed once, and no manifest.json / run_results.json written: their JSON cost ~5 % of a capture.
        parsed = parsed_manifest(workspace, dbt_vars)
        base = ["build", "--no-write-json", "--resource-type", "model", "seed", "snapshot", "test"]
        if full_refresh:
            base.append("--full-refresh")
        pending_select, pending_exclude = list(select), list(exclude)
        reuse: Any = parsed
        while True:
            command = [*base, *(["--select", *pending_select] if pending_select else []),
                       *(["--exclude", *pending_exclude] if pending_exclude else [])]
            try:
                outcomes = node_outcomes(workspace, command, dbt_vars, [recorder.on_event], manifest=reuse)
            except DbtCommandError as exc:
                if not any(phrase in str(exc) for phrase in _DBT_AUTH_FAILURES):
                    raise
                # dbt's text names the cause but suggests impersonation roles or nothing: say what to change.
                raise CaptureError(f"{_auth_failure(profile_config, target)}\n{exc}") from None
            recorder.first_pass = False
            # A build leaves its nodes compiled in the Manifest (ephemeral CTEs marked injected): a retry pass
            # parses afresh (partial parse makes that cheap) rather than compile on top of that state.
            reuse = None
            failed.update((o.unique_id, o.message) for o in outcomes if o.status == "error")
            skipped = [o for o in outcomes if o.status == "skipped"]
            # A skipped node is retried without its failed parents; a pass that only skips would loop forever.
            if not skipped or len(skipped) == len(outcomes):
                failed.update((o.unique_id, "dbt skipped it after an upstream capture failed") for o in skipped)
                break
            pending_select, pending_exclude = [o.selector for o in skipped], []
        if sources:
            _capture_freshness(workspace, list(sources), dbt_vars, recorder, parsed)
    manifest = _graph(parsed)
    for unique_id, message in failed.items():
        node = recorder.nodes.setdefault(unique_id, NodeCapture())
        node.fallback = node.fallback or f"its statements could not be captured: {message}"
    capture = Capture(recorder.nodes, recorder.on_run_start, recorder.on_run_end)
    project = recorder.project if recorder.project != "unknown" else str(target.get("project") or "")
    mark_run_dependencies(capture, manifest, project)
    return capture


def _capture_freshness(workspace: Any, sources: list[str], dbt_vars: Mapping[str, Any] | None,
                       recorder: Recorder, parsed: Any) -> None:
    from cosmos_async.dbt.invoke import node_outcomes

    # Stale or missing sources are no capture failure: the source tasks judge them when they run. Freshness
    # compiles no node, so the parsed Manifest serves it as it is.
    node_outcomes(workspace, ["source", "freshness", "--no-write-json", "--select", *sources], dbt_vars,
                  [recorder.on_event], manifest=parsed)


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
