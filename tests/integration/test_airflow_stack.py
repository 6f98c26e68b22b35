"""Smoke test of the Airflow harness: real api-server, scheduler, dag-processor and triggerer on SQLite.

Airflow starts once for the module. A start-from-trigger task must never take a worker slot, and a run must
survive the triggerer being killed (SIGKILL) and restarted while its trigger sleeps.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.airflow import AirflowStack, AirflowStackError

pytestmark = pytest.mark.e2e

# The triggerer imports the trigger by its classpath, so it lives in a module on PYTHONPATH, not in a DAG file.
TRIGGER_MODULE = '''
"""Sleeps, then ends its task in the triggerer."""
from __future__ import annotations

import asyncio
from typing import Any

from airflow.triggers.base import BaseTrigger, TaskSuccessEvent


class SleepTrigger(BaseTrigger):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return "harness_smoke_triggers.SleepTrigger", {"seconds": self.seconds}

    async def run(self):
        await asyncio.sleep(self.seconds)
        yield TaskSuccessEvent(xcoms={"slept": self.seconds})
'''

# Safe mode parses only files that mention both "airflow" and "dag".
DAG_FILE = '''
"""Two smoke DAGs: a >> b >> c, where b starts and ends in the triggerer after sleeping."""
from __future__ import annotations

from airflow.sdk import BaseOperator, dag, task
from airflow.triggers.base import StartTriggerArgs


class SleepInTriggerer(BaseOperator):
    start_from_trigger = True

    def __init__(self, seconds: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.start_trigger_args = StartTriggerArgs(
            trigger_cls="harness_smoke_triggers.SleepTrigger",
            trigger_kwargs={"seconds": seconds},
            next_method="execute_complete",
            next_kwargs=None,
            timeout=None,
        )

    def execute(self, context):
        raise RuntimeError("start_from_trigger task ran on a worker")

    def execute_complete(self, context, event=None):
        raise RuntimeError("start_from_trigger task resumed on a worker")


def smoke(dag_id: str, seconds: float):
    @dag(dag_id=dag_id, schedule=None)
    def build():
        @task
        def a() -> int:
            return 1

        @task
        def c() -> int:
            return 3

        a() >> SleepInTriggerer(task_id="b", seconds=seconds) >> c()

    return build()


smoke("harness_smoke", 1.0)
smoke("harness_smoke_slow", 5.0)
'''


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, airflow_pycache: Path) -> Iterator[AirflowStack]:
    root = tmp_path_factory.mktemp("airflow_stack")
    dags, pylib = root / "dags", root / "pylib"
    dags.mkdir()
    pylib.mkdir()
    (dags / "harness_smoke.py").write_text(textwrap.dedent(DAG_FILE))
    (pylib / "harness_smoke_triggers.py").write_text(textwrap.dedent(TRIGGER_MODULE))
    env = {"PYTHONPATH": str(pylib), "PYTHONPYCACHEPREFIX": str(airflow_pycache)}
    with AirflowStack(root / "home", dags, env=env, parallelism=2) as af:
        af.wait_for_dag("harness_smoke", timeout=60)
        af.wait_for_dag("harness_smoke_slow", timeout=30)
        yield af


def test_start_from_trigger_task_never_takes_a_worker(stack: AirflowStack) -> None:
    run_id = stack.trigger("harness_smoke", run_id="smoke-1")
    assert stack.wait_for_run("harness_smoke", run_id, timeout=60) == "success"

    states = {t["task_id"]: t["state"] for t in stack.task_instances("harness_smoke", run_id)}
    assert states == {"a": "success", "b": "success", "c": "success"}
    assert stack.xcom("harness_smoke", run_id, "b", key="slept") == 1.0
    assert stack.xcom("harness_smoke", run_id, "c") == 3

    seconds = stack.worker_seconds("harness_smoke", run_id)
    assert seconds["b"] == 0.0, seconds
    assert seconds["a"] > 0.0, seconds
    assert seconds["c"] > 0.0, seconds
    assert "Trigger fired event" in stack.task_log("harness_smoke", run_id, "b")


def test_run_survives_triggerer_kill_and_restart(stack: AirflowStack) -> None:
    dag_id = "harness_smoke_slow"
    run_id = stack.trigger(dag_id, run_id="restart-1")
    # "deferred" is set by the scheduler before a triggerer picks the trigger up: wait for the trigger's own log.
    deadline = time.monotonic() + 60
    while _trigger_starts(stack, dag_id, run_id) < 1:
        assert time.monotonic() < deadline, stack.task_instances(dag_id, run_id)
        time.sleep(0.3)
    time.sleep(1.0)  # the 5 s trigger is now asleep in the triggerer

    stack.kill_triggerer()
    stack.start_triggerer()

    assert stack.wait_for_run(dag_id, run_id, timeout=60) == "success"
    assert _trigger_starts(stack, dag_id, run_id) == 2  # the new triggerer ran it again from the start
    assert stack.worker_seconds(dag_id, run_id)["b"] == 0.0


def _trigger_starts(stack: AirflowStack, dag_id: str, run_id: str) -> int:
    try:
        log = stack.task_log(dag_id, run_id, "b")
    except AirflowStackError as e:  # the scheduler has not created the task instance yet
        assert "HTTP 404" in str(e), e
        return 0
    return sum(" starting" in line for line in log.splitlines())


def test_wait_for_dag_reports_import_errors(stack: AirflowStack) -> None:
    broken = 'from airflow.sdk import dag\n\n\n@dag(dag_id="harness_broken", schedule=None)\ndef broken():\n    1 / 0\n'
    (stack.dags_folder / "harness_broken.py").write_text(broken + "\n\nbroken()\n")
    with pytest.raises(AirflowStackError, match=r"(?s)harness_broken.*has an import error.*ZeroDivisionError"):
        stack.wait_for_dag("harness_broken", timeout=30)
