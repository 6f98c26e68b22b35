"""Pick how to load the project (manifest or dbt ls) and return its node graph."""

from __future__ import annotations

from pathlib import Path

from cosmos_async.config import LoadMode, ProfileConfig, ProjectConfig, RenderConfig, cache_dir
from cosmos_async.errors import ConfigurationError
from cosmos_async.project.manifest import Manifest, load_manifest


def load_project(project: ProjectConfig, render: RenderConfig, profile: ProfileConfig | None,
                 project_dir: Path | None) -> Manifest:
    """AUTOMATIC reads manifest_path when it exists and falls back to ``dbt ls`` on the project directory."""
    method = render.load_method
    if method == LoadMode.AUTOMATIC:
        has_manifest = project.manifest_path is not None and project.manifest_path.is_file()
        method = LoadMode.DBT_MANIFEST if has_manifest or project_dir is None else LoadMode.DBT_LS
    if method == LoadMode.DBT_MANIFEST:
        if project.manifest_path is None:
            raise ConfigurationError("LoadMode.DBT_MANIFEST needs ProjectConfig(manifest_path=...).")
        return load_manifest(project.manifest_path, cache=cache_dir())
    if project_dir is None:
        raise ConfigurationError("LoadMode.DBT_LS needs ProjectConfig(dbt_project_path=...).")
    if profile is None:
        raise ConfigurationError("LoadMode.DBT_LS needs a profile_config to run `dbt ls`.")
    from cosmos_async.project.dbt_ls import load_with_dbt_ls

    return load_with_dbt_ls(project_dir, profile, dbt_vars=project.dbt_vars, env=project.env_vars,
                            install_deps=project.install_dbt_deps and render.dbt_deps)
