"""A virtualenv holding dbt, when dbt is not installed next to Airflow.

For the setup task (``ExecutionConfig(async_py_requirements=[...])``) and for VIRTUALENV tasks
(``operator_args`` ``py_requirements``). Built once per (requirements, Python, system site packages) under
``[cosmos] cache_dir``, with uv when it is available (seconds, from uv's cache) and ``venv`` + pip otherwise.
Airflow is never installed into it: the capture code runs from this package's source (see
:mod:`cosmos_async.dbt.capture_cli`), which needs only dbt and what dbt already brings (PyYAML, Jinja2, requests).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from cosmos_async.errors import ConfigurationError, CosmosAsyncError

# What the capture imports besides dbt; dbt-core requires all three, listing them keeps that explicit.
CAPTURE_REQUIREMENTS = ("pyyaml", "jinja2", "requests")
# Bump when the venv layout changes so old caches are not reused.
_LAYOUT = 1
_READY = "cosmos-async-venv.json"
_TAIL_LINES = 15
# (the argument the requirements came from, the requirements), for error messages.
_Source = tuple[str, list[str]]


class VenvBuildError(CosmosAsyncError):
    """The dbt virtualenv could not be built from ``async_py_requirements``."""


def venv_key(requirements: Sequence[str], system_site_packages: bool = False) -> str:
    """Cache key: the sorted requirements, the Python version and implementation, the layout version (and
    system site packages when they are on, so existing keys stay as they were)."""
    identity: dict[str, object] = {"requirements": sorted({r.strip() for r in requirements if r.strip()}),
                                   "python": platform.python_version(), "implementation": sys.implementation.name,
                                   "extra": sorted(CAPTURE_REQUIREMENTS), "layout": _LAYOUT}
    if system_site_packages:
        identity["system_site_packages"] = True
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def venv_python(venv: Path) -> Path:
    """The interpreter of a virtualenv."""
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def default_root() -> Path:
    """``[cosmos] cache_dir``/venvs: next to the manifest caches, so one setting moves them all."""
    from cosmos_async.config import cache_dir

    return cache_dir() / "venvs"


def is_ready(venv: Path) -> bool:
    """True when the venv finished building and its interpreter still exists (base Python not removed)."""
    return (venv / _READY).is_file() and venv_python(venv).exists()


def ensure_venv(requirements: Sequence[str], root: Path | None = None, *,
                system_site_packages: bool = False,
                argument: str = "ExecutionConfig(async_py_requirements=...)") -> Path:
    """Return a virtualenv with ``requirements`` installed, building it on first use.

    ``system_site_packages``: the venv also sees the base interpreter's packages (Cosmos's
    ``py_system_site_packages``). ``argument`` names where the requirements came from, for error messages.

    Concurrent callers (two setup tasks on one worker) serialise on a lock file: one builds, the others wait
    and reuse it. A build that failed or was killed leaves no ready marker and is redone by the next caller.
    """
    requirements = [r.strip() for r in requirements if r.strip()]
    if not requirements:
        raise ConfigurationError("async_py_requirements is empty: list the dbt packages for the setup task, e.g. "
                                 "ExecutionConfig(async_py_requirements=['dbt-bigquery==1.10.0']).")
    root = Path(root) if root is not None else default_root()
    venv = root / f"dbt-{venv_key(requirements, system_site_packages)}"
    if is_ready(venv):
        return venv
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{venv.name}.lock"):
        if is_ready(venv):  # another process built it while this one waited
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        started = time.monotonic()
        try:
            tool = _build(venv, [*requirements, *CAPTURE_REQUIREMENTS], (argument, requirements),
                          system_site_packages)
            _check_adapter(venv, (argument, requirements))
        except BaseException:
            shutil.rmtree(venv, ignore_errors=True)
            raise
        info = {"requirements": sorted(requirements), "python": platform.python_version(), "tool": tool,
                "build_s": round(time.monotonic() - started, 3), "built_at": time.time()}
        # Written last: its presence is what tells other callers the venv is complete.
        (venv / _READY).write_text(json.dumps(info, indent=2))
    return venv


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _uv() -> str | None:
    """The uv binary: on PATH, or from the ``uv`` Python package installed next to Airflow."""
    found = shutil.which("uv")
    if found:
        return found
    try:
        from uv import find_uv_bin  # type: ignore[import-not-found]

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        return None


def _build(venv: Path, packages: list[str], requirements: _Source, system_site_packages: bool) -> str:
    """Create ``venv`` and install ``packages``; return the tool used."""
    uv = _uv()
    # The base interpreter, not a venv's: uv and venv resolve it the same way, and a venv must not nest.
    python = sys.executable
    site = ["--system-site-packages"] if system_site_packages else []
    if uv:
        _run([uv, "venv", "--quiet", *site, "--python", python, str(venv)], requirements, "uv venv")
        _run([uv, "pip", "install", "--python", str(venv_python(venv)), *packages], requirements, "uv pip install")
        return "uv"
    _run([python, "-m", "venv", *site, str(venv)], requirements, "python -m venv")
    _run([str(venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *packages],
         requirements, "pip install")
    return "pip"


def _run(command: list[str], requirements: _Source, what: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    except OSError as exc:
        raise VenvBuildError(f"cannot build the dbt virtualenv for {_named(requirements)}: "
                             f"{what} could not start ({exc}).") from None
    if done.returncode != 0:
        raise VenvBuildError(_failure(requirements, what, done.returncode, done.stdout + done.stderr))


def _named(source: _Source) -> str:
    """'ExecutionConfig(async_py_requirements=...) [...]' for messages."""
    return f"{source[0]} {source[1]}"


def _failure(source: _Source, what: str, code: int, output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()][-_TAIL_LINES:]
    text = "\n".join(lines).lower()
    named = [r for r in source[1] if _name(r) in text]
    culprit = f" (the output names {', '.join(named)})" if named else ""
    return (f"cannot build the dbt virtualenv for {_named(source)}{culprit}: "
            f"{what} exited with {code}. Fix the requirement(s); last lines:\n" + "\n".join(lines))


def _name(requirement: str) -> str:
    """The distribution name of a requirement string ('dbt-bigquery==1.10' → 'dbt-bigquery')."""
    for i, char in enumerate(requirement):
        if not (char.isalnum() or char in "-_."):
            return requirement[:i].strip().lower()
    return requirement.strip().lower()


def _check_adapter(venv: Path, requirements: _Source) -> None:
    """The capture runs dbt-bigquery: say so now rather than through dbt's 'Could not find adapter' later."""
    done = subprocess.run([str(venv_python(venv)), "-c", "import dbt.adapters.bigquery, dbt.cli.main"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-_TAIL_LINES:])
        raise VenvBuildError(f"the virtualenv built from {_named(requirements)} cannot import "
                             f"dbt-bigquery; add it, e.g. 'dbt-bigquery==1.10.0'. Python said:\n{tail}")
