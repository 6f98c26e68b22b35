"""A task killed with SIGKILL (out of memory, a worker lost) leaves no dbt process running beneath it.

Setup tasks: neither the helper of a split capture nor the capture in a dbt virtualenv's Python goes on. The
"setup task" is a Python process of the test's that starts the capture and kills itself with SIGKILL once dbt is
building; its children must end within seconds, without finishing their capture (no result file).
LOCAL tasks running a dbt executable (``dbt_executable_path``): their dbt cancels the BigQuery job it waits on
and exits, rather than wait the query out and write the table beside the task's retry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.synthetic import write_project

# Each model takes ~1 s of Jinja to render when dbt runs it (not when it parses: `execute` is false then), so
# the children are still busy when their parent dies.
_SLOW = "{% if execute %}{% for i in range(3000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}{% endif %}\n"

_SETUP = """
import json, os, signal, sys
from pathlib import Path
from cosmos_async.config import ProfileConfig
from cosmos_async.dbt import capture

project = Path(sys.argv[1])
profile = ProfileConfig(profile_name="synthetic", target_name="dev", profiles_yml_filepath=project / "profiles.yml")

def die():
    children = []  # this process's children as (pid, working directory): the capture's dbt processes
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1]) == os.getpid():
                children.append((int(entry), os.readlink(f"/proc/{entry}/cwd"),
                                 open(f"/proc/{entry}/cmdline").read().replace(chr(0), " ")[:200]))
        except OSError:
            pass
    print("CHILDREN " + json.dumps(children), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

if sys.argv[2] == "split":
    capture.MIN_SPLIT_SQL_FILES = 1  # the project is far below the size where a split pays
    def captured(unique_id, node, seen=set()):
        seen.add(unique_id)
        if len(seen) == 3:  # both processes are building
            die()
    capture.capture_project(project, profile, processes=2, on_node_captured=captured)
else:
    import logging
    from cosmos_async.dbt.capture_cli import capture_in_python

    class Killer(logging.Handler):
        def emit(self, record):
            if " START sql " in record.getMessage():
                die()

    log = logging.getLogger("setup")
    log.addHandler(Killer())
    log.setLevel(logging.INFO)
    capture_in_python(Path(sys.executable), project, profile, log=log, workdir=Path(sys.argv[3]))
"""


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs (an orphan that has ended may linger as a zombie until someone reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("mode", ["split", "venv"], ids=["helper_of_a_split_capture", "capture_in_a_dbt_python"])
def test_a_setup_killed_mid_capture_leaves_no_dbt_running(tmp_path: Path, bigquery_emulator, mode: str) -> None:
    project = write_project(tmp_path / "synthetic", 12, seed=5)
    for model in (project / "models").glob("*.sql"):
        model.write_text(model.read_text() + _SLOW)
    env = {**os.environ, "BIGQUERY_API_ENDPOINT": bigquery_emulator.endpoint, "BIGQUERY_DATASET": f"killed_{mode}",
           "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    setup = subprocess.run([sys.executable, "-c", _SETUP, str(project), mode, str(tmp_path / "work")],
                           capture_output=True, text=True, env=env, timeout=300)
    assert setup.returncode == -9, setup.stdout[-3000:] + setup.stderr[-3000:]
    children = json.loads(setup.stdout.split("CHILDREN ", 1)[1].splitlines()[0])
    captures = [(pid, cwd) for pid, cwd, _ in children if Path(cwd).name.startswith("cosmos-async-share-")
                or Path(cwd) == tmp_path / "work"]
    assert len(captures) == 1, children  # the helper, or the dbt Python's capture, each in its own workdir
    pid, workdir = captures[0]
    deadline = time.monotonic() + 20
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(pid), f"the capture process {pid} outlived its killed setup task by 20 s"
    assert not (Path(workdir) / "result.json").exists(), "the capture went on to the end after its setup task died"


_LOCAL_TASK = """
import sys
from pathlib import Path
from cosmos_async.config import ProfileConfig
from cosmos_async.dbt.executable import DbtInvocation
from cosmos_async.operators.local import run_dbt_command

project = Path(sys.argv[1])
profile = ProfileConfig(profile_name="synthetic", target_name="dev", profiles_yml_filepath=project / "profiles.yml")
dbt = DbtInvocation(subprocess=True, executable=str(Path(sys.executable).with_name("dbt")))
run_dbt_command(project, profile, "run", ["model_00000"], invocation=dbt)
"""


def _children(pid: int) -> list[tuple[int, str]]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append((int(entry), Path(f"/proc/{entry}/cmdline").read_text().replace("\0", " ")))
        except OSError:
            pass
    return found


def _builds_the_model(config: dict) -> bool:
    """Whether a job configuration is the one `dbt run --select model_00000` submits for its model."""
    return "model_00000" in json.dumps(config)


def test_a_local_task_killed_while_its_query_runs_leaves_no_dbt_and_no_job_running(tmp_path: Path, proxy) -> None:
    proxy.reset()
    # BigQuery reports the model's job RUNNING for two minutes. (Not dbt's `create schema` before it: dbt waits
    # that one out whatever signal it gets, as its thread pool's threads are joined at exit.)
    proxy.hold_for = lambda config: ("model", 120.0 if _builds_the_model(config) else 0.0)
    project = write_project(tmp_path / "synthetic", 3, seed=5)
    env = {**os.environ, "BIGQUERY_API_ENDPOINT": proxy.url, "BIGQUERY_DATASET": "killed_local",
           "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    with (tmp_path / "task.log").open("w") as log:
        task = subprocess.Popen([sys.executable, "-c", _LOCAL_TASK, str(project)], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        job = None
        while job is None and task.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            job = next((j for j, c in dict(proxy.configs).items() if _builds_the_model(c)), None)
        assert job is not None, (tmp_path / "task.log").read_text()[-3000:]
        dbt = [pid for pid, command in _children(task.pid) if "bin/dbt run " in command]
        assert len(dbt) == 1, _children(task.pid)
        task.kill()
        task.wait()
    finally:
        proxy.hold_for = None
        if task.poll() is None:
            task.kill()
    deadline = time.monotonic() + 20
    while _running(dbt[0]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(dbt[0]), f"dbt {dbt[0]} outlived its killed task by 20 s, waiting on a job nobody reads"
    assert proxy.cancels[job] >= 1, f"the job {job} was left running: {proxy.stats()}"
