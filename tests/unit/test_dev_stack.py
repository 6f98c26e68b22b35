"""Static checks of the Docker / Astro CLI side of the dev stack (no Docker engine needed).

Covers the repository's Dockerfile and .dockerignore, the Astro project in dev/ (airflow_settings.yaml,
docker-compose.override.yml, requirements, .env.example, .astro/config.yaml) and the generated
dev/requirements-lock.txt. Regenerate that file with ``python -m tests.unit.test_dev_stack``.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from cosmos_async.profiles import GoogleCloudServiceAccountDictProfileMapping, gcs_storage_options
from cosmos_async.provider import OPTIONS

REPO = Path(__file__).resolve().parents[2]
DEV = REPO / "dev"
LOCK_FILE = DEV / "requirements-lock.txt"
# The runtime image owns Airflow and the providers it bundles: the image keeps those and pins the rest.
RUNTIME_OWNED = ("apache-airflow", "apache-airflow-core", "apache-airflow-task-sdk",
                 "apache-airflow-providers-common-compat", "apache-airflow-providers-common-io",
                 "apache-airflow-providers-common-sql", "apache-airflow-providers-smtp",
                 "apache-airflow-providers-standard")
EXPORT_ARGS = ["export", "--frozen", "--no-dev", "--no-hashes", "--no-annotate", "--no-header", "--no-emit-workspace",
               *(arg for name in RUNTIME_OWNED for arg in ("--no-emit-package", name))]
LOCK_HEADER = """\
## Constraints for the image (Dockerfile): the third-party pins of uv.lock, without the dev group and without the
## distributions the Astro Runtime base image owns (apache-airflow, its core, task SDK and bundled providers).
## Generated, never edited: tests/unit/test_dev_stack.py fails when it differs from uv.lock. Regenerate with
##   .venv/bin/python -m tests.unit.test_dev_stack
## Universal lock: environment markers pick the right pin for the image's Python.
"""
COSMOS_ENV = {f"AIRFLOW__COSMOS__{name.upper()}" for name in OPTIONS}
EMULATOR_SERVICES = {"bigquery-emulator": 9050, "gcs-emulator": 9023}


# -- helpers -----------------------------------------------------------------------------------------------------


def _uv() -> str:
    uv = os.environ.get("UV") or shutil.which("uv")
    if not uv:
        pytest.fail("uv is needed to check dev/requirements-lock.txt against uv.lock (./dev/test installs it)")
    return uv


def render_lock() -> str:
    """dev/requirements-lock.txt as it must read for the current uv.lock."""
    res = subprocess.run([_uv(), *EXPORT_ARGS], cwd=REPO, capture_output=True, text=True, timeout=120)
    if res.returncode:
        raise RuntimeError(f"uv export failed: {res.stderr}")
    return LOCK_HEADER + res.stdout


def _dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(REPO / "Dockerfile"))


def _instructions(name: str) -> list[str]:
    return [i["value"] for i in _dockerfile().structure if i["instruction"] == name]


def _copy_sources() -> list[str]:
    sources = []
    for value in _instructions("COPY") + _instructions("ADD"):
        words = [w for w in shlex.split(value) if not w.startswith("--")]
        assert not any(w.startswith("--from") for w in shlex.split(value)), "no multi-stage copies expected"
        sources += words[:-1]
    return sources


def _dockerignored(path: str) -> bool:
    """Docker's .dockerignore rule, closely enough for whole files and folders: the last matching pattern wins,
    ``!`` re-includes, and a pattern matching a folder matches everything in it."""
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(c, pattern) or fnmatch.fnmatchcase(c, pattern.removeprefix("**/"))
               or fnmatch.fnmatchcase(c, f"*/{pattern.removeprefix('**/')}") for c in candidates):
            ignored = not negate
    return ignored


def _lock_versions() -> dict[str, list[Version]]:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    out: dict[str, list[Version]] = {}
    for pkg in lock["package"]:
        if "version" in pkg:
            out.setdefault(canonicalize_name(pkg["name"]), []).append(Version(pkg["version"]))
    return out


def _settings_connection(text: str) -> dict[str, Any]:
    conns = yaml.safe_load(text)["airflow"]["connections"]
    (conn,) = [c for c in conns if c["conn_id"] == "gcp_conn"]
    return conn


def _env_file_keys(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


# -- Dockerfile and build context --------------------------------------------------------------------------------


def test_base_image_is_an_astro_runtime_of_the_locked_airflow_series() -> None:
    base = _dockerfile().baseimage
    m = re.fullmatch(r"astrocrpublic\.azurecr\.io/runtime:(\d+)\.(\d+)-(\d+)-base", base or "")
    assert m, f"expected an Airflow 3 Astro Runtime -base image, got {base!r}"
    airflow = max(_lock_versions()["apache-airflow"])
    assert (int(m[1]), int(m[2])) == (airflow.major, airflow.minor), \
        f"runtime {m[1]}.{m[2]} runs another Airflow series than uv.lock's {airflow}"


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    sources = _copy_sources()
    assert {"pyproject.toml", "cosmos_async", "triggers", "dev/dags", "dev/requirements-lock.txt"} <= set(sources)
    for source in sources:
        assert (REPO / source).exists(), f"COPY source {source} does not exist"
        assert not _dockerignored(source), f"COPY source {source} is excluded by .dockerignore"
    # The package build reads the readme pyproject.toml names.
    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["readme"]
    assert readme in sources


def test_secrets_and_local_state_stay_out_of_the_build_context() -> None:
    for path in ("dev/.env", ".venv", ".git", ".demo", "tests", "dev/dags/dbt/corner_shop/target",
                 "cosmos_async/__pycache__/x.pyc"):
        assert _dockerignored(path), f"{path} would be sent to the Docker daemon"


def test_image_env_names_are_options_the_package_reads() -> None:
    envs = dict(_dockerfile().envs)
    cosmos = {k for k in envs if k.startswith("AIRFLOW__COSMOS__")}
    assert cosmos <= COSMOS_ENV, f"unknown [cosmos] options: {cosmos - COSMOS_ENV}"
    assert {"AIRFLOW__COSMOS__REMOTE_TARGET_PATH", "AIRFLOW__COSMOS__REMOTE_TARGET_PATH_CONN_ID"} <= cosmos
    assert envs["AIRFLOW__COSMOS__REMOTE_TARGET_PATH"].startswith("gs://")
    assert envs["AIRFLOW__COSMOS__REMOTE_TARGET_PATH_CONN_ID"] == "gcp_conn"


def test_image_installs_the_package_under_the_lock_constraints() -> None:
    (install,) = [r for r in _instructions("RUN") if "pip install" in r]
    assert "--constraint /opt/cosmos-async/requirements-lock.txt" in install
    assert "--requirement /opt/cosmos-async/requirements.txt" in install


# -- requirements ------------------------------------------------------------------------------------------------


def test_requirements_lock_is_uv_lock_exported() -> None:
    assert LOCK_FILE.read_text() == render_lock(), \
        "dev/requirements-lock.txt is stale: run .venv/bin/python -m tests.unit.test_dev_stack"


def test_requirements_lock_leaves_airflow_to_the_runtime_and_pins_the_rest() -> None:
    reqs = [Requirement(line) for line in LOCK_FILE.read_text().splitlines() if line and not line.startswith("#")]
    names = {canonicalize_name(r.name) for r in reqs}
    assert not names & set(RUNTIME_OWNED)
    assert {"dbt-core", "dbt-bigquery", "google-cloud-bigquery", "gcsfs", "aiohttp"} <= names
    assert all(str(r.specifier).startswith("==") for r in reqs)


def test_extra_requirements_agree_with_the_lock() -> None:
    """Whatever dev/requirements.txt adds must not fight the pins (the image installs both in one resolution)."""
    lines = [line.split("#")[0].strip() for line in (DEV / "requirements.txt").read_text().splitlines()]
    extra = [Requirement(line) for line in lines if line]
    locked = _lock_versions()
    unknown = []
    for req in extra:
        versions = locked.get(canonicalize_name(req.name))
        if versions is None:
            unknown.append(str(req))
        else:
            assert any(req.specifier.contains(v, prereleases=True) for v in versions), \
                f"{req} conflicts with uv.lock ({', '.join(map(str, versions))})"
    if unknown:  # new packages: let the resolver decide, with the image's constraints
        res = subprocess.run([_uv(), "pip", "compile", "--quiet", "--no-header", "--python-version", "3.12",
                              "--constraint", str(LOCK_FILE), "-"], input="\n".join(unknown), text=True,
                             capture_output=True, timeout=180, cwd=REPO)
        assert res.returncode == 0, f"dev/requirements.txt does not resolve with the lock:\n{res.stderr}"


def test_packages_txt_lists_debian_package_names_only() -> None:
    for line in (DEV / "packages.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[a-z0-9][a-z0-9+.-]+(=[\w.+:~-]+)?", line.strip()), line


# -- Astro project -----------------------------------------------------------------------------------------------


def test_astro_project_layout() -> None:
    config = yaml.safe_load((DEV / ".astro" / "config.yaml").read_text())
    assert config["project"]["name"]
    for name in ("dags/corner_shop.py", "requirements.txt", "packages.txt", "airflow_settings.yaml",
                 "docker-compose.override.yml", ".env.example"):
        assert (DEV / name).is_file(), name


def test_settings_connection_maps_to_a_dbt_target_on_the_emulators() -> None:
    conn = _settings_connection((DEV / "airflow_settings.yaml").read_text())
    assert conn["conn_type"] == "google_cloud_platform"
    extras = conn["conn_extra"]
    target = GoogleCloudServiceAccountDictProfileMapping(conn_id="gcp_conn", profile_args={"dataset": "x"}).target(
        extras)
    assert target["api_endpoint"] == "http://bigquery-emulator:9050"
    assert target["method"] == "oauth-secrets"
    assert (target["project"], target["dataset"]) == ("demo-proj", "x")
    assert gcs_storage_options(extras, "gcp_conn") == {"project": "demo-proj",
                                                       "endpoint_url": "http://gcs-emulator:9023", "token": "anon"}


def test_production_connection_block_maps_to_a_service_account_target() -> None:
    text = (DEV / "airflow_settings.yaml").read_text()
    block = text.split("# --- production ---\n")[1].split("# --- end production ---")[0]
    uncommented = "\n".join(line.replace("#", "", 1)[2:] for line in block.splitlines())
    conn = _settings_connection(f"airflow:\n  connections:\n{uncommented}\n")
    assert not {"anonymous", "bigquery_api_endpoint", "storage_api_endpoint"} & set(conn["conn_extra"])
    target = GoogleCloudServiceAccountDictProfileMapping(conn_id="gcp_conn", profile_args={"dataset": "x"}).target(
        conn["conn_extra"])
    assert target["method"] == "service-account-json"
    assert target["keyfile_json"]["type"] == "service_account"
    assert "api_endpoint" not in target


def test_compose_override_adds_both_emulators_on_the_astro_network() -> None:
    text = (DEV / "docker-compose.override.yml").read_text()
    assert "$" not in text, "compose interpolates $ in the override: escape it as $$"
    services = yaml.safe_load(text)["services"]
    assert set(services) == set(EMULATOR_SERVICES)
    locked = _lock_versions()
    bucket = dict(_dockerfile().envs)["AIRFLOW__COSMOS__REMOTE_TARGET_PATH"].removeprefix("gs://").split("/")[0]
    for name, port in EMULATOR_SERVICES.items():
        service = services[name]
        assert "airflow" in service["networks"], "Astro's compose network is called airflow"
        assert service["ports"] == [f"127.0.0.1:{port}:{port}"]
        script = " ".join(service["command"])
        assert f"-port {port}" in script or f"--port={port}" in script
        for pin in re.findall(r"([\w-]+)==([\w.]+)", script):
            assert Version(pin[1]) in locked[canonicalize_name(pin[0])], f"{pin} is not uv.lock's version"
    assert f"--default-bucket={bucket}" in " ".join(services["gcs-emulator"]["command"])
    assert "--rest-host 0.0.0.0" in " ".join(services["bigquery-emulator"]["command"])


def test_env_example_sets_only_known_cosmos_options() -> None:
    keys = _env_file_keys(DEV / ".env.example")
    cosmos = {k for k in keys if k.startswith("AIRFLOW__COSMOS__")}
    assert cosmos <= COSMOS_ENV and "AIRFLOW__COSMOS__REMOTE_TARGET_PATH" in cosmos
    image_env = dict(_dockerfile().envs)
    assert keys["AIRFLOW__COSMOS__REMOTE_TARGET_PATH"] == image_env["AIRFLOW__COSMOS__REMOTE_TARGET_PATH"]


# -- demo entry --------------------------------------------------------------------------------------------------


def test_demo_entry_script_is_executable_bash_that_runs_the_module() -> None:
    script = DEV / "demo"
    assert script.stat().st_mode & stat.S_IXUSR
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "uv sync --frozen" in text and "python -m dev.demo" in text



def test_container_test_puts_the_merged_stack_on_the_host_network_without_touching_airflow_commands() -> None:
    from dev.container_test import for_host_network

    override = yaml.safe_load((DEV / "docker-compose.override.yml").read_text())
    stack = yaml.safe_load((DEV / "containers" / "docker-compose.yml").read_text())
    merged = {"services": {**stack["services"], **override["services"]}, "networks": {"airflow": None}}
    out = for_host_network(merged, "local/python:test", set(override["services"]))
    assert "networks" not in out
    for name, service in out["services"].items():
        assert service["network_mode"] == "host" and not {"networks", "ports"} & set(service), name
        assert "bigquery-emulator:127.0.0.1" in service["extra_hosts"]
    emulator = " ".join(out["services"]["bigquery-emulator"]["command"])
    assert "0.0.0.0" not in emulator and "--rest-host 127.0.0.1" in emulator
    assert out["services"]["gcs-emulator"]["image"] == "local/python:test"
    assert out["services"]["scheduler"]["command"] == stack["services"]["scheduler"]["command"]


def test_container_test_entry_script_is_executable_bash_named_in_the_readme() -> None:
    script = DEV / "container-test"
    assert script.stat().st_mode & stat.S_IXUSR
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert "python -m dev.container_test" in script.read_text()
    assert "./dev/container-test" in (REPO / "README.md").read_text()


if __name__ == "__main__":
    LOCK_FILE.write_text(render_lock())
    print(f"wrote {LOCK_FILE.relative_to(REPO)}", file=sys.stderr)
