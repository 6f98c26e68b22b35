"""dbt as an executable: a dbt installed in its own virtualenv, run as a subprocess.

MWAA and Astro document dbt in a virtualenv of its own (``ExecutionConfig(dbt_executable_path=...)``). LOCAL
runs that executable; the AIRFLOW_ASYNC capture needs Python code inside dbt, so it runs with that dbt's
interpreter (:func:`dbt_python`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cosmos_async.errors import ConfigurationError

_TAIL_LINES = 40
_DEFAULT_LOG = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def default_dbt() -> str:
    """The ``dbt`` next to the running interpreter, else the one on PATH."""
    beside = Path(sys.executable).with_name("dbt")
    if beside.is_file():
        return str(beside)
    found = shutil.which("dbt")
    if found is None:
        raise ConfigurationError("InvocationMode.SUBPROCESS found no `dbt` next to the Python running Airflow nor "
                                 "on PATH; set ExecutionConfig(dbt_executable_path='/path/to/venv/bin/dbt').")
    return found


def _not_dbt(path: Path, why: str) -> ConfigurationError:
    return ConfigurationError(f"ExecutionConfig(dbt_executable_path={str(path)!r}) {why}; point it at the `dbt` "
                              "of the virtualenv that holds dbt-core and dbt-bigquery, e.g. "
                              "'/usr/local/airflow/python3-virtualenv/dbt-env/bin/dbt'.")


@lru_cache(maxsize=16)
def dbt_python(executable: str) -> Path:
    """The Python interpreter of a dbt executable, checked to hold dbt-core; one clear error when it does not.

    The interpreter is the ``python`` beside it (a virtualenv's bin directory) or the one its shebang names.
    """
    path = Path(executable)
    if not path.is_file():
        raise _not_dbt(path, "does not exist")
    if not os.access(path, os.X_OK):
        raise _not_dbt(path, "is not executable")
    python = _interpreter(path)
    if python is None:
        raise _not_dbt(path, "has no Python beside it and no Python shebang, so it is not a pip-installed dbt")
    # importlib.metadata, not `import dbt`: this answers in ~50 ms where importing dbt takes seconds.
    done = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('dbt-core'))"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise _not_dbt(path, f"is not a dbt: its Python {python} has no dbt-core installed")
    return python


def _interpreter(path: Path) -> Path | None:
    beside = path.with_name("python")
    if beside.is_file():
        return beside
    try:
        with path.open("rb") as handle:
            first = handle.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    # `#!/usr/bin/env python3` names the interpreter by its PATH lookup.
    name = words[1] if len(words) > 1 and words[0].endswith("/env") else (words[0] if words else "")
    found = shutil.which(name) if name and "/" not in name else name
    if found and "python" in Path(found).name and Path(found).is_file():
        return Path(found)
    return None


class DbtSubprocess:
    """Runs dbt commands as a subprocess of ``executable``, its output streamed to ``log`` line by line.

    ``append_env`` False starts dbt with only the workspace's environment (Cosmos's meaning). ``stop`` is for a
    task's ``on_kill``: SIGINT makes dbt cancel its running queries before it exits, SIGTERM does not. On Linux,
    dbt gets that same signal when the task's process dies without running ``on_kill`` (SIGKILL: out of memory, a
    lost worker), so it does not go on building beside the task's retry.
    """

    def __init__(self, executable: str | Path, *, append_env: bool = True, cancel_query_on_kill: bool = True,
                 log: logging.Logger | None = None) -> None:
        self.executable = str(executable)
        self.append_env = append_env
        self.cancel_query_on_kill = cancel_query_on_kill
        self.log = log or _DEFAULT_LOG
        self.process: subprocess.Popen[str] | None = None

    def run(self, args: Sequence[str], env: Mapping[str, str]) -> tuple[int, list[str]]:
        """Run ``dbt <args>``; return its exit code and last lines of output."""
        child_env = {**(os.environ if self.append_env else {}), **env, "DBT_USE_COLORS": "false"}
        tail: deque[str] = deque(maxlen=_TAIL_LINES)
        try:
            self.process = subprocess.Popen([self.executable, *args], env=child_env, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                            errors="replace", start_new_session=True,
                                            preexec_fn=_signal_when_parent_dies(self._stop_signal()))
        except OSError as exc:
            raise ConfigurationError(f"cannot start dbt at {self.executable} ({exc}); fix "
                                     "ExecutionConfig(dbt_executable_path=...).") from None
        try:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                tail.append(line.rstrip())
                self.log.info("%s", line.rstrip())
            return self.process.wait(), list(tail)
        finally:
            if self.process.poll() is None:  # the task failed or was killed mid-run: do not leave dbt running
                self.stop()
                try:
                    self.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()

    def stop(self) -> None:
        """End a running dbt: SIGINT (dbt cancels its queries) or SIGTERM, per ``cancel_query_on_kill``."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        sig = self._stop_signal()
        self.log.info("sending %s to dbt (pid %d)", sig.name, process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)

    def _stop_signal(self) -> signal.Signals:
        return signal.SIGINT if self.cancel_query_on_kill else signal.SIGTERM


def _signal_when_parent_dies(sig: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to send ``sig`` to the child when the calling thread ends (with its
    process, for a task's), or None elsewhere. prctl is looked up before the fork: between fork and exec the
    child only makes two system calls.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:  # the parent died between the fork and the request: dbt never starts
            os._exit(1)

    return arm


@dataclass(frozen=True)
class DbtInvocation:
    """How a worker starts dbt: in-process (dbtRunner), as a dbt executable, or as the dbt of a virtualenv
    cached by requirements (VIRTUALENV). Decided at parse, resolved on the worker by :meth:`runner`."""

    subprocess: bool = False
    executable: str | None = None
    py_requirements: tuple[str, ...] = ()
    py_system_site_packages: bool = False
    append_env: bool = True
    cancel_query_on_kill: bool = True

    def runner(self, log: logging.Logger | None = None) -> DbtSubprocess | None:
        """The subprocess runner to use, or None for in-process; builds the virtualenv on first use."""
        if not self.subprocess:
            return None
        if self.py_requirements:
            from cosmos_async.dbt.venv import ensure_venv, venv_python

            venv = ensure_venv(self.py_requirements, system_site_packages=self.py_system_site_packages,
                               argument="operator_args py_requirements")
            (log or _DEFAULT_LOG).info("dbt from the virtualenv %s (requirements %s)", venv,
                                       list(self.py_requirements))
            executable = str(venv_python(venv).with_name("dbt"))
        elif self.executable:
            dbt_python(self.executable)  # one clear error for a missing or non-dbt path, before dbt starts
            executable = self.executable
        else:
            executable = default_dbt()
        (log or _DEFAULT_LOG).info("running dbt as a subprocess: %s", executable)
        return DbtSubprocess(executable, append_env=self.append_env, cancel_query_on_kill=self.cancel_query_on_kill,
                             log=log)
