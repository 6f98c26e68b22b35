"""Load a project without a manifest: run ``dbt ls`` once and cache its manifest by project checksum.

The dag-processor re-parses DAG files every few seconds; running dbt each time would cost seconds per parse.
The cache key covers everything that changes the graph (project files, vars, env, profile target, dbt
version), so an edit to a model or a var invalidates it and nothing else does.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from cosmos_async.config import ProfileConfig, cache_dir
from cosmos_async.project.manifest import Manifest, load_manifest

# Directories dbt writes or downloads into: their content never changes the project's graph definition.
_SKIPPED_DIRS = frozenset({"target", "logs", "dbt_packages", ".git", "__pycache__", ".venv"})
_GRAPH_SUFFIXES = frozenset({".sql", ".yml", ".yaml", ".csv", ".py", ".md", ".json"})


def project_checksum(project_dir: Path, profile: ProfileConfig, dbt_vars: Mapping[str, Any],
                     env: Mapping[str, str]) -> str:
    """A digest of what determines the graph ``dbt ls`` would produce."""
    digest = hashlib.sha256()
    for path in sorted(_graph_files(project_dir)):
        digest.update(str(path.relative_to(project_dir)).encode() + b"\0" + path.read_bytes() + b"\0")
    settings = {"profile": profile.profile_name, "target": profile.target_name, "vars": dict(dbt_vars),
                "env": dict(env), "dbt": _dbt_version()}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _graph_files(project_dir: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(project_dir):
        dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS]
        files += [Path(root) / n for n in names if Path(n).suffix in _GRAPH_SUFFIXES]
    return files


def _dbt_version() -> str:
    try:
        return metadata.version("dbt-core")
    except metadata.PackageNotFoundError:
        return "absent"


def load_with_dbt_ls(project_dir: Path, profile: ProfileConfig, *, dbt_vars: Mapping[str, Any] | None = None,
                     env: Mapping[str, str] | None = None, install_deps: bool = False) -> Manifest:
    """The project's graph from a cached ``dbt ls`` manifest, running dbt only when the project changed."""
    dbt_vars, env = dict(dbt_vars or {}), dict(env or {})
    key = project_checksum(Path(project_dir), profile, dbt_vars, env)
    cached = cache_dir() / f"manifest-{key}.json"
    if cached.is_file():
        return load_manifest(cached, cache=cache_dir())

    from cosmos_async.dbt_invoke import dbt_workspace, invoke

    with dbt_workspace(Path(project_dir), profile, install_deps=install_deps, env=env) as workspace:
        invoke(workspace, ["ls", "--output", "json", "--quiet"], dbt_vars)
        produced = workspace.target_dir / "manifest.json"
        manifest = load_manifest(produced)
        cached.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a concurrent parser never reads a half-written cache file.
        partial = cached.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(produced.read_bytes())
        partial.replace(cached)
    return manifest
