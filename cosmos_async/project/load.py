"""Pick how to load the project (manifest, dbt ls, or a dbt ls file) and return its node graph."""

from __future__ import annotations

from pathlib import Path

from cosmos_async.config import LoadMode, ProfileConfig, ProjectConfig, RenderConfig, cache_dir
from cosmos_async.errors import ConfigurationError
from cosmos_async.project.manifest import Manifest, load_manifest


def load_project(project: ProjectConfig, render: RenderConfig, profile: ProfileConfig | None,
                 project_dir: Path | None, dbt_executable: Path | None = None) -> Manifest:
    """AUTOMATIC and CUSTOM read manifest_path when it exists and fall back to ``dbt ls`` on the project
    directory (run by ``dbt_executable`` when given); DBT_LS_FILE reads RenderConfig.dbt_ls_path."""
    method = render.load_method
    if method in (LoadMode.AUTOMATIC, LoadMode.CUSTOM):
        has_manifest = project.manifest_path is not None and project.manifest_path.is_file()
        method = LoadMode.DBT_MANIFEST if has_manifest or project_dir is None else LoadMode.DBT_LS
    if method == LoadMode.DBT_LS_FILE:
        from cosmos_async.project.dbt_ls import load_dbt_ls_file

        assert render.dbt_ls_path is not None  # RenderConfig refuses DBT_LS_FILE without it
        return load_dbt_ls_file(render.dbt_ls_path, project.project_name)
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
                            install_deps=project.install_dbt_deps and render.dbt_deps, dbt_executable=dbt_executable)
