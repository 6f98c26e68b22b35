"""The helper processes of a split capture (:mod:`cosmos_async.dbt.shares`): each is this Python running
``cosmos_async.dbt.capture_cli`` in share mode.

A helper starts before the setup's own dbt parses, parses at the same time, then waits for one line on its
stdin: its share (:class:`~cosmos_async.dbt.shares.Share` as JSON; an empty line: nothing to do). Its stdin
stays open until the setup is done with it; closed earlier, or by the setup's death, it ends the helper
(:class:`~cosmos_async.dbt.capture_cli.ParentPipe`). It prints
dbt's output, and one marked line per node as dbt finishes it, so that node's files go up at once; its whole
capture comes back through its result file, as from a dbt virtualenv.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from cosmos_async.dbt.attribution import NodeCallback
from cosmos_async.dbt.capture_cli import build_request, decode, encode, read_result, start_child
from cosmos_async.dbt.captured import Capture, NodeCapture
from cosmos_async.dbt.shares import Share
from cosmos_async.errors import CosmosAsyncError

_NODE_MARK = "\x1ecosmos-async-node "
_TAIL_LINES = 30


class CaptureWorker:
    """One helper process: started, then given its share, then waited for."""

    def __init__(self, number: int, work: Path, request: dict[str, Any], secrets: dict[str, str],
                 on_node_captured: NodeCallback | None) -> None:
        self.number, self.on_node_captured = number, on_node_captured
        self.process, self.result_path = start_child(Path(sys.executable), request, secrets, work)
        self.tail: deque[str] = deque(maxlen=_TAIL_LINES)
        self.assigned = False
        self.reader = threading.Thread(target=self._read, name=f"cosmos-async-capture-{number}", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(_NODE_MARK):
                if self.on_node_captured is not None:
                    message = json.loads(line[len(_NODE_MARK):])
                    self.on_node_captured(message["unique_id"], decode(NodeCapture, message["node"]))
                continue
            self.tail.append(line.rstrip())
            print(f"[capture {self.number}] {line.rstrip()}", flush=True)

    def assign(self, share: Share | None) -> None:
        """Hand the helper its share (None: it ends without capturing)."""
        assert self.process.stdin is not None
        self.assigned = True
        try:
            self.process.stdin.write((json.dumps(dataclasses.asdict(share)) if share else "") + "\n")
            self.process.stdin.flush()
        except OSError:  # it ended already; result() says why
            pass

    def result(self) -> Capture | str:
        """The helper's capture, or why there is none."""
        code = self.process.wait()
        self.reader.join()
        try:
            return read_result(self.result_path, code, list(self.tail), Path(sys.executable))
        except CosmosAsyncError as exc:
            return f"capture process {self.number} failed: {exc}"

    def stop(self) -> None:
        """End the helper, if it has not ended: its stdin closed, it stops at once; one never given a share (the
        setup failed before it could plan) may still be importing dbt, and is killed."""
        assert self.process.stdin is not None
        with contextlib.suppress(OSError):  # a pipe it already closed by ending
            self.process.stdin.close()
        if not self.assigned:
            self.process.kill()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # whatever keeps it, it must not outlive the setup task
            self.process.kill()
            self.process.wait()
        self.reader.join()


@contextmanager
def start_workers(count: int, project_dir: Path, profile_config: Any, *,
                  on_node_captured: NodeCallback | None = None, **options: Any) -> Iterator[list[CaptureWorker]]:
    """``count`` helpers for a capture of ``project_dir``, stopped (killed, if need be) when the block ends."""
    request, secrets = build_request(project_dir, profile_config, **options)
    request["share"] = True
    with ExitStack() as stack:
        workers = []
        for number in range(2, count + 2):
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cosmos-async-share-")))
            workers.append(CaptureWorker(number, work, request, secrets, on_node_captured))
            stack.callback(workers[-1].stop)
        try:
            yield workers
        except BaseException:  # the setup's own capture failed: the helpers' work is lost anyway
            for worker in workers:
                worker.process.kill()
            raise


# -- helper side ----------------------------------------------------------------------------------------------
def parse_share(line: str) -> Share | None:
    """This helper's share, from the line its parent writes on stdin once it has planned the split."""
    line = line.strip()
    return Share(**json.loads(line)) if line else None


def announce_node(unique_id: str, node: NodeCapture) -> None:
    """Tell the parent of a node dbt has just finished (dbt's thread prints whole lines, so none interleave)."""
    print(_NODE_MARK + json.dumps({"unique_id": unique_id, "node": encode(node)}), flush=True)
