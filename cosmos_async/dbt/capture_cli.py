"""Run the capture in another Python (a dbt virtualenv's) and bring the :class:`Capture` back.

Parent: :func:`capture_in_python` resolves the dbt target where Airflow is (connections), writes a request file
without secrets, and starts ``<dbt's python> -m cosmos_async.dbt.capture_cli request.json result.json`` with this
package's source on PYTHONPATH. Secret values travel only in the child's environment, under the same
``COSMOS_ASYNC_SECRET_*`` names the in-process profile uses; the request's target refers to them by
``env_var()``. Child: :func:`main` rebuilds the profile, runs :func:`capture_project` and writes the result.

The parent holds the child's stdin open for as long as it wants the child (a helper's share is its first line):
when it ends, the parent is done or gone, and the child ends at once (:class:`ParentPipe`), so a setup task
killed with SIGKILL (out of memory, say) leaves no dbt running beneath it.

The Capture crosses as JSON built from the dataclasses' own fields, so fields added to NodeCapture later
cross without changes here as long as their values are JSON types, bytes (as base64), dataclasses or containers
of them.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import traceback
import types
import typing
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from cosmos_async.config import ProfileConfig
from cosmos_async.dbt.capture import capture_project, capture_share
from cosmos_async.dbt.captured import Capture, CaptureError
from cosmos_async.errors import CosmosAsyncError

_SECRET_REF = "{{ env_var('COSMOS_ASYNC_SECRET_"
# Inherited variables that would make the venv's Python load another environment's packages.
_DROPPED_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
_TAIL_LINES = 30
_PARENT_GONE = 75  # the exit code of a child whose parent closed its stdin before it finished (none reads it)


# -- Capture <-> JSON ------------------------------------------------------------------------------------------
def encode(value: Any, where: str = "capture") -> Any:
    """JSON-ready form of a Capture (or any of its parts); raise naming the first field JSON cannot hold."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name), f"{where}.{f.name}") for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise CaptureError(f"{where} has non-string keys; the capture cannot cross to the setup task as JSON.")
        return {k: encode(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (bytes, bytearray)):  # a seed's uploaded CSV; decode() turns it back by the field's type
        return base64.b64encode(value).decode("ascii")
    raise CaptureError(f"{where} is a {type(value).__name__}, which is not JSON-serializable: the capture cannot "
                       "cross from the dbt virtualenv; store it as str/int/float/bool/bytes/list/dict or a dataclass.")


def decode(kind: Any, value: Any) -> Any:
    """Rebuild a value of type ``kind`` (a dataclass, container, optional or JSON type) from :func:`encode`."""
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        hints = typing.get_type_hints(kind)
        fields = dataclasses.fields(kind)
        built = kind(**{f.name: decode(hints[f.name], value[f.name]) for f in fields if f.init and f.name in value})
        for f in fields:
            if not f.init and f.name in value:
                setattr(built, f.name, decode(hints[f.name], value[f.name]))
        return built
    if kind in (bytes, bytearray) and isinstance(value, str):
        return kind(base64.b64decode(value))
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        return decode(options[0], value) if len(options) == 1 else value
    if origin in (list, tuple, set, frozenset, Sequence):
        item = args[0] if args else Any
        items = [decode(item, v) for v in value]
        return origin(items) if origin in (tuple, set, frozenset) else items
    if origin in (dict, Mapping):
        item = args[1] if len(args) == 2 else Any
        return {k: decode(item, v) for k, v in value.items()}
    return value


# -- parent side -----------------------------------------------------------------------------------------------
def _escape_templates(value: Any) -> Any:
    """Keep already-rendered values literal when the child renders the profile again (``{{`` in a value)."""
    if isinstance(value, dict):
        return {k: _escape_templates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escape_templates(v) for v in value]
    if isinstance(value, str) and "{" in value and not value.startswith(_SECRET_REF):
        return "{% raw %}" + value + "{% endraw %}"
    return value


def build_request(project_dir: Path, profile_config: ProfileConfig, *, select: Sequence[str] = (),
                  exclude: Sequence[str] = (), dbt_vars: Mapping[str, Any] | None = None,
                  full_refresh: bool = False, install_deps: bool = False,
                  env: Mapping[str, str] | None = None,
                  sources: Sequence[str] = (),
                  partial_parse: Path | None = None, processes: int = 1) -> tuple[dict[str, Any], dict[str, str]]:
    """(request without secrets, environment for the child holding the secrets and ``env``)."""
    from cosmos_async.dbt.invoke import environment
    from cosmos_async.profiles import run_target, split_secrets

    with environment(env or {}):  # the profile may read env_var()s that ``env`` sets
        safe, secret_env = split_secrets(run_target(profile_config))
    # Absolute: the child runs in its own working directory, so that directory is all ``-m`` adds to sys.path.
    request = {"project_dir": str(Path(project_dir).resolve()), "profile_name": profile_config.profile_name,
               "target_name": profile_config.target_name, "target": _escape_templates(safe),
               "select": list(select), "exclude": list(exclude), "vars": dict(dbt_vars or {}),
               "full_refresh": full_refresh, "install_deps": install_deps, "sources": list(sources),
               "partial_parse": str(partial_parse) if partial_parse else None, "processes": processes,
               # Values of ``env`` may be secrets too: only their names go in the file.
               "env_keys": sorted(env or {})}
    return request, {**dict(env or {}), **secret_env}


def _source_path(root: Path) -> Path:
    """A directory holding only this package and the triggers package (the capture uses its layout and load
    limits), for the child's PYTHONPATH.

    Not the directory these packages sit in: that may be the Airflow environment's site-packages, whose
    packages would shadow the venv's.
    """
    import cosmos_async_triggers

    path = root / "src"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    # parents[1]: the cosmos_async package directory (this module sits in cosmos_async/dbt/).
    for package in (Path(__file__).resolve().parents[1], Path(cosmos_async_triggers.__file__).resolve().parent):
        try:
            (path / package.name).symlink_to(package, target_is_directory=True)
        except OSError:  # no symlinks (some Windows setups)
            shutil.copytree(package, path / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    return path


def capture_in_python(python: Path, project_dir: Path, profile_config: ProfileConfig, *, select: Sequence[str] = (),
                    exclude: Sequence[str] = (), dbt_vars: Mapping[str, Any] | None = None,
                    full_refresh: bool = False, install_deps: bool = False, env: Mapping[str, str] | None = None,
                    partial_parse: Path | None = None, log: logging.Logger | None = None,
                    workdir: Path | None = None, sources: Sequence[str] = (), processes: int = 1) -> Capture:
    """:func:`capture_project` run by ``python`` (the interpreter of a dbt virtualenv: one built from
    ``async_py_requirements``, or the one of ``dbt_executable_path``); dbt's output goes to ``log`` line by line.

    ``workdir`` keeps the request and result files there (to inspect them); by default they live in a private
    temporary directory removed afterwards.
    """
    log = log or logging.getLogger(__name__)
    request, child_secrets = build_request(project_dir, profile_config, select=select, exclude=exclude,
                                           dbt_vars=dbt_vars, full_refresh=full_refresh,
                                           install_deps=install_deps, env=env, sources=sources,
                                           partial_parse=partial_parse, processes=processes)
    with contextlib.ExitStack() as stack:
        if workdir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cosmos-async-capture-")))
        else:
            work = Path(workdir)
            work.mkdir(parents=True, exist_ok=True)
        process, result_path = start_child(python, request, child_secrets, work)
        tail: deque[str] = deque(maxlen=_TAIL_LINES)
        try:
            assert process.stdout is not None
            for line in process.stdout:
                tail.append(line.rstrip())
                log.info("%s", line.rstrip())
            code = process.wait()
        finally:
            if process.poll() is None:  # the task was killed or timed out: do not leave dbt running
                process.kill()
                process.wait()
            assert process.stdin is not None
            process.stdin.close()
        return read_result(result_path, code, tail, python)


def start_child(python: Path, request: Mapping[str, Any], secrets: Mapping[str, str],
                work: Path) -> tuple[subprocess.Popen, Path]:
    """Start ``python -m cosmos_async.dbt.capture_cli`` on ``request`` in ``work``; (process, result path).
    Its stdout (dbt's output, merged with stderr) is a text pipe to read line by line; its stdin a text pipe
    the caller closes once it no longer wants the child (:class:`ParentPipe`)."""
    request_path, result_path = work / "request.json", work / "result.json"
    request_path.write_text(json.dumps(request))
    result_path.unlink(missing_ok=True)  # a kept workdir must not hand back an earlier run's result
    child_env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    child_env.update(secrets)
    child_env.update(PYTHONPATH=str(_source_path(work)), PYTHONUNBUFFERED="1")
    child_env.setdefault("DBT_USE_COLORS", "false")  # the lines go to a log file, not a terminal
    command = [str(python), "-m", "cosmos_async.dbt.capture_cli", str(request_path), str(result_path)]
    process = subprocess.Popen(command, cwd=work, env=child_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, errors="replace")
    return process, result_path


def read_result(result_path: Path, code: int, tail: Sequence[str], python: Path) -> Capture:
    """The Capture a child wrote, or its error raised as the same cosmos-async class."""
    try:
        result = json.loads(result_path.read_text())
    except (OSError, ValueError):
        lines = "\n".join(tail)
        raise CaptureError(f"the capture with the dbt Python {python} exited with {code} without a result; "
                           f"last lines:\n{lines}") from None
    if "error" in result:
        raise _child_error(result["error"], python)
    return decode(Capture, result["capture"])


def _child_error(error: Mapping[str, str], python: Path) -> Exception:
    """The child's exception as the same cosmos-async class when it is one (ConfigurationError stays one)."""
    module, _, name = error.get("type", "").rpartition(".")
    message = error.get("message", "")
    if module.startswith("cosmos_async"):
        try:
            import importlib

            cls = getattr(importlib.import_module(module), name)
            if isinstance(cls, type) and issubclass(cls, CosmosAsyncError):
                return cls(message)
        except Exception:  # fall through to the generic error
            pass
    return CaptureError(f"the capture with the dbt Python {python} failed: {error.get('type')}: {message}")


# -- child side ------------------------------------------------------------------------------------------------
class ParentPipe:
    """This child's stdin as its parent holds it: the first line is the parent's message (a helper's share);
    the end of the pipe ends this process at once, whatever dbt is doing, since nobody waits for its result."""

    def __init__(self, stream: typing.TextIO) -> None:
        self._stream = stream
        self._first: list[str] = []
        self._got_first = threading.Event()
        threading.Thread(target=self._watch, name="cosmos-async-parent-pipe", daemon=True).start()

    def _watch(self) -> None:
        for line in self._stream:
            if not self._got_first.is_set():
                self._first.append(line)
                self._got_first.set()
        os._exit(_PARENT_GONE)  # no cleanup owed: the child's files hold no secrets, its temp dirs are its own

    def first_line(self) -> str:
        """The parent's message, once it has written it."""
        self._got_first.wait()
        return self._first[0]


def run_request(request: Mapping[str, Any], pipe: ParentPipe) -> Capture:
    """Run :func:`capture_project` for a request written by :func:`build_request`."""
    with tempfile.TemporaryDirectory(prefix="cosmos-async-profile-") as tmp:
        path = Path(tmp) / "profiles.yml"
        outputs = {request["target_name"]: request["target"]}
        path.write_text(yaml.safe_dump({request["profile_name"]: {"target": request["target_name"],
                                                                   "outputs": outputs}}, sort_keys=False))
        os.chmod(path, 0o600)
        profile = ProfileConfig(profile_name=request["profile_name"], target_name=request["target_name"],
                                profiles_yml_filepath=path)
        env = {k: os.environ[k] for k in request["env_keys"] if k in os.environ}
        options: dict[str, Any] = {
            "dbt_vars": request["vars"], "full_refresh": request["full_refresh"],
            "install_deps": request["install_deps"], "env": env,
            "partial_parse": Path(request["partial_parse"]) if request.get("partial_parse") else None}
        if request.get("share"):  # a helper of a split capture (cosmos_async.dbt.capture_workers)
            from cosmos_async.dbt.capture_workers import announce_node, parse_share

            return capture_share(Path(request["project_dir"]), profile, lambda: parse_share(pipe.first_line()),
                                 on_node_captured=announce_node, **options)
        return capture_project(Path(request["project_dir"]), profile, select=request["select"],
                               exclude=request["exclude"], sources=request.get("sources") or (),
                               processes=int(request.get("processes") or 1), **options)


def main(argv: Sequence[str]) -> int:
    """``python -m cosmos_async.dbt.capture_cli request.json result.json``; exit 1 with the error in the result."""
    if len(argv) != 2:
        print("usage: python -m cosmos_async.dbt.capture_cli <request.json> <result.json>", file=sys.stderr)
        return 2
    request_path, result_path = Path(argv[0]), Path(argv[1])
    try:
        pipe = ParentPipe(sys.stdin)
        payload: dict[str, Any] = {"capture": encode(run_request(json.loads(request_path.read_text()), pipe))}
        code = 0
    except BaseException as exc:  # dbt may raise SystemExit; the parent needs the message whatever it is
        traceback.print_exc()
        kind = type(exc)
        payload = {"error": {"type": f"{kind.__module__}.{kind.__qualname__}", "message": str(exc)}}
        code = 1
    partial = result_path.with_suffix(".partial")
    partial.write_text(json.dumps(payload))
    partial.replace(result_path)  # the parent never reads half a file
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
