"""The Astro CLI dev stack, run for real in containers: build the images, start the stack ``astro dev start`` would
(PostgreSQL, scheduler, dag-processor, triggerer, api-server and the two emulators of the compose override), apply
``airflow_settings.yaml``'s connections as Astro does, run ``corner_shop`` end to end and check what a user would:
every task succeeded, every model task ran in the triggerer (no worker stint), every dbt relation exists in the
BigQuery emulator, and the run's remote files were written and are gone after its teardown.

Run through ``./dev/container-test`` (it installs Docker and starts the engine when missing). Exits 0 only when
every check passes; stops and removes every container it started, whatever happens (unless ``--keep``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from dev.demo import (
    BUCKET,
    DAG_ID,
    PREFIX,
    PROJECT,
    TaskRow,
    _raise_interrupt,
    built_tables,
    failure_excerpts,
    follow_run,
    format_summary,
)
from tests.support.airflow import AirflowApi, AirflowStackError, free_port, worker_stints_in

REPO = Path(__file__).resolve().parents[1]
DEV = REPO / "dev"
CONTAINERS = DEV / "containers"
STATE = REPO / ".container-test"
COMPOSE_PROJECT = "cosmos-async-devstack"
ASTRO_UID = 50000
AIRFLOW_SERVICES = ("scheduler", "dag-processor", "triggerer", "api-server")
# Fixed by dev/docker-compose.override.yml and gcp_conn (airflow_settings.yaml): they must be free on the host.
EMULATOR_PORTS = {"bigquery-emulator": (9050, 9060), "gcs-emulator": (9023,)}
BIGQUERY = "http://127.0.0.1:9050"
GCS = "http://127.0.0.1:9023"


class CheckFailed(RuntimeError):
    """A check of the run failed; the message says what a user would have seen."""


# -- docker ------------------------------------------------------------------------------------------------------


def _run(args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), text=True, capture_output=True, **kwargs)


def build_images(log_dir: Path) -> dict[str, str]:
    """Run dev/containers/build-images; its KEY=VALUE lines name the images."""
    log_dir.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([str(CONTAINERS / "build-images")], text=True, stdout=subprocess.PIPE,
                         env={**os.environ, "BUILD_LOG_DIR": str(log_dir)})
    if res.returncode:
        raise CheckFailed(f"building the images failed (exit {res.returncode}); build logs in {log_dir}")
    return dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)


def for_host_network(merged: dict[str, Any], python_image: str, emulators: set[str]) -> dict[str, Any]:
    """The merged compose configuration as this machine runs it: on Docker's host network (no networks, no
    published ports; service names resolve to 127.0.0.1), the python:3.11-slim stand-in for the emulators' image,
    and 127.0.0.1 for 0.0.0.0 in their commands (on the host network 0.0.0.0 is every interface of the machine)."""
    hosts = [f"{name}:127.0.0.1" for name in merged["services"]]
    services = {}
    for name, service in merged["services"].items():
        service = {k: v for k, v in service.items() if k not in ("networks", "ports")}
        service |= {"network_mode": "host", "extra_hosts": hosts}
        if name in emulators:
            service["image"] = python_image
            service["command"] = [re.sub(r"\b0\.0\.0\.0\b", "127.0.0.1", part) for part in service["command"]]
        services[name] = service
    return {k: v for k, v in merged.items() if k != "networks"} | {"services": services}


class ComposeStack(AirflowApi):
    """The stack's containers through docker-compose, and the Airflow REST API they serve."""

    def __init__(self, images: dict[str, str], state: Path) -> None:
        self.state = state
        include = state / "include"
        include.mkdir(parents=True, exist_ok=True)
        include.chmod(0o755)
        port = free_port()
        super().__init__(f"http://127.0.0.1:{port}", secrets.token_urlsafe(12), DEV / "dags")
        # Written by us so the password is known; the auth manager only adds users missing from the file.
        passwords = include / "simple_auth_manager_passwords.json"
        passwords.write_text(json.dumps({"admin": self.password}))
        # The auth manager opens it for appending, as the image's user (astro, uid 50000); private otherwise.
        passwords.chmod(0o600)
        with contextlib.suppress(PermissionError):  # not root: the user's own files, Docker maps nothing
            os.chown(passwords, ASTRO_UID, 0)
        self.python_image = images["PYTHON_IMAGE"]
        self.files = [CONTAINERS / "docker-compose.yml", DEV / "docker-compose.override.yml"]
        self.env = {
            **os.environ,
            "AIRFLOW_IMAGE": images["AIRFLOW_IMAGE"],
            "POSTGRES_IMAGE": images["POSTGRES_IMAGE"],
            "POSTGRES_PASSWORD": secrets.token_urlsafe(16),
            "POSTGRES_PORT": str(free_port()),
            "AIRFLOW_API_PORT": str(port),
            "AIRFLOW_FERNET_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW_SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW_WORKER_LOG_PORT": str(free_port()),
            "AIRFLOW_TRIGGER_LOG_PORT": str(free_port()),
            "AIRFLOW_INCLUDE_DIR": str(include),
        }

    def compose(self, *args: str, check: bool = True, timeout: float = 600) -> str:
        cmd = ["docker-compose", "--project-name", COMPOSE_PROJECT, "--project-directory", str(DEV)]
        for f in self.files:
            cmd += ["--file", str(f)]
        res = _run([*cmd, *args], env=self.env, timeout=timeout)
        if check and res.returncode:
            raise CheckFailed(f"docker-compose {' '.join(args)} exited {res.returncode}:\n{res.stdout}{res.stderr}")
        return res.stdout

    def up(self) -> None:
        """Merge the two files as Astro does (``docker-compose config``), adapt the result to the host network,
        and start it. The merged file holds the run's generated passwords: private, and removed by ``down``."""
        merged = yaml.safe_load(self.compose("config"))
        emulators = set(yaml.safe_load((DEV / "docker-compose.override.yml").read_text())["services"])
        path = self.state / "docker-compose.host.yml"
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(for_host_network(merged, self.python_image, emulators), sort_keys=False))
        self.files = [path]
        try:
            self.compose("up", "--detach", "--no-build")
        except CheckFailed as exc:  # say why: the logs of whatever exited (db-migration first of all)
            exited = [s for s in self.containers() if "running" not in self.state_of(s)]
            logs = "\n".join(f"--- {s} ({self.state_of(s)}) ---\n{self.service_log(s)}" for s in exited)
            raise CheckFailed(f"{exc}\n{logs}") from None

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", check=False, timeout=180)
        (self.state / "docker-compose.host.yml").unlink(missing_ok=True)

    def containers(self) -> dict[str, str]:
        """Container id by service name, for every container of the project (running or not)."""
        ids = self.compose("ps", "--all", "--quiet", check=False).split() or \
            self.compose("ps", "--quiet", check=False).split()
        out = {}
        for cid in ids:
            res = _run(["docker", "inspect", "--format", '{{index .Config.Labels "com.docker.compose.service"}}', cid])
            out[res.stdout.strip()] = cid
        return out

    def service_log(self, service: str, lines: int = 40) -> str:
        cid = self.containers().get(service)
        if not cid:
            return "(no container)"
        res = _run(["docker", "logs", "--tail", str(lines), cid])
        return res.stdout + res.stderr

    def state_of(self, service: str) -> str:
        """``running 0``, ``exited 1``, ...: the container's status and its restart count ('' when missing)."""
        cid = self.containers().get(service) or "-"
        return _run(["docker", "inspect", "--format", "{{.State.Status}} {{.RestartCount}}", cid]).stdout.strip()

    def check_alive(self) -> None:
        for service in AIRFLOW_SERVICES:
            if (state := self.state_of(service)) != "running 0":
                raise AirflowStackError(f"container {service} is {state or 'missing'} (status, restarts)\n"
                                        f"{self.service_log(service)}")

    def process_logs(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {s} (docker logs, tail) ---\n{self.service_log(s)[-chars:]}" for s in AIRFLOW_SERVICES)

    def apply_settings(self, settings: Path) -> list[str]:
        """Create the connections of ``airflow_settings.yaml`` in the scheduler container, as ``astro dev start``
        does: one ``airflow connections add`` each (secrets travel as arguments, never through a log)."""
        names = []
        for conn in yaml.safe_load(settings.read_text())["airflow"].get("connections") or []:
            args = ["airflow", "connections", "add", conn["conn_id"], "--conn-type", conn["conn_type"]]
            for field in ("host", "schema", "login", "password", "port"):
                if conn.get(f"conn_{field}") not in (None, ""):
                    args += [f"--conn-{field}", str(conn[f"conn_{field}"])]
            if conn.get("conn_extra"):
                args += ["--conn-extra", json.dumps(conn["conn_extra"])]
            res = _run(["docker", "exec", self.containers()["scheduler"], *args], timeout=120)
            if res.returncode:
                raise CheckFailed(f"airflow connections add {conn['conn_id']} failed:\n{res.stderr[-2000:]}")
            names.append(conn["conn_id"])
        return names


# -- sampling ----------------------------------------------------------------------------------------------------

_SIZE = re.compile(r"([\d.]+)\s*([KMG]i?B|B)")
_UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


class Sampler:
    """Every ``interval`` seconds: the memory of the project's containers (``docker stats``) and the number of
    the run files under the remote prefix in the GCS emulator. Keeps the peaks."""

    def __init__(self, interval: float = 2.0) -> None:
        self.interval = interval
        self.peak_total = 0.0
        self.peak_by_container: dict[str, float] = {}
        self.max_remote_files = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def sample(self) -> None:
        res = _run(["docker", "stats", "--no-stream", "--format", "{{.Name}}\t{{.MemUsage}}"], timeout=30)
        total = 0.0
        for line in res.stdout.splitlines():
            name, _, usage = line.partition("\t")
            m = _SIZE.match(usage.strip())
            if COMPOSE_PROJECT in name and m:
                used = float(m[1]) * _UNITS[m[2]]
                total += used
                self.peak_by_container[name] = max(self.peak_by_container.get(name, 0.0), used)
        self.peak_total = max(self.peak_total, total)
        with contextlib.suppress(OSError, ValueError):
            self.max_remote_files = max(self.max_remote_files, len(remote_files()))

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.sample()
            self._stop.wait(self.interval)


def remote_files() -> list[str]:
    """Object names under the run files' prefix in the GCS emulator."""
    query = urllib.parse.urlencode({"prefix": f"{PREFIX}/"})
    with urllib.request.urlopen(f"{GCS}/storage/v1/b/{BUCKET}/o?{query}", timeout=5) as resp:
        return [item["name"] for item in json.load(resp).get("items", [])]


def wait_url(url: str, what: str, timeout: float, stack: ComposeStack, service: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise CheckFailed(f"{what} not answering at {url} after {timeout:.0f}s ({exc})\n"
                                  f"{stack.service_log(service)}") from exc
            time.sleep(1)


# -- checks ------------------------------------------------------------------------------------------------------


def expected_relations() -> set[str]:
    """``dataset.name`` of every relation dbt builds for the example project (ephemeral models build none)."""
    return {f"{n['schema']}.{n.get('alias') or n['name']}" for n in _manifest()["nodes"].values()
            if n["resource_type"] in ("model", "seed", "snapshot") and n["config"].get("materialized") != "ephemeral"}


def model_names() -> set[str]:
    """The example project's models that build a relation (each one ``<name>.run`` task)."""
    return {n["name"] for n in _manifest()["nodes"].values()
            if n["resource_type"] == "model" and n["config"].get("materialized") != "ephemeral"}


def _manifest() -> dict[str, Any]:
    return json.loads((DEV / "dags" / "dbt" / "corner_shop" / "manifest.json").read_text())


def check_run(stack: ComposeStack, run_id: str, rows: Sequence[TaskRow], sampler: Sampler) -> list[str]:
    """The user-visible checks; returns the lines of a passing report, raises CheckFailed otherwise."""
    report = []
    state = stack.run_state(DAG_ID, run_id)
    bad = [f"{r.task_id}={r.state}" for r in rows if r.state != "success"]
    if state != "success" or bad:
        raise CheckFailed(f"run {state}; tasks not successful: {', '.join(bad)}\n"
                          f"{failure_excerpts(stack, run_id, rows)}")
    report.append(f"run success, {len(rows)} tasks success")

    tis = {t["id"]: t["task_id"] for t in stack.task_instances(DAG_ID, run_id)}
    scheduler_log = _run(["docker", "logs", stack.containers()["scheduler"]])
    stints = worker_stints_in(scheduler_log.stdout + scheduler_log.stderr)
    on_workers = {task for ti_id, task in tis.items() if ti_id in stints}
    models = {task for task in tis.values() if task.removesuffix(".run") in model_names()}
    if len(models) != len(model_names()) or models & on_workers:
        raise CheckFailed(f"model tasks that held a worker slot: {sorted(models & on_workers)}; "
                          f"model tasks found {sorted(models)}")
    report.append(f"{len(models)} model tasks ran in the triggerer (no worker stint in the scheduler's log); "
                  f"on a worker: {', '.join(sorted(on_workers))} (setup, teardown, LOCAL fallbacks)")

    tables = {t.split(" ")[0] for t in built_tables(BIGQUERY)}
    missing = expected_relations() - tables
    if missing:
        raise CheckFailed(f"relations missing in the BigQuery emulator: {sorted(missing)}; present: {sorted(tables)}")
    report.append(f"{len(expected_relations())} dbt relations present in the BigQuery emulator")

    left = remote_files()
    if left or not sampler.max_remote_files:
        raise CheckFailed(f"remote run files: {sampler.max_remote_files} seen during the run, {len(left)} left "
                          f"after it (expected some, then none): {left[:5]}")
    report.append(f"run files: up to {sampler.max_remote_files} under gs://{BUCKET}/{PREFIX}/ during the run, "
                  "none after the teardown")
    return report


# -- main --------------------------------------------------------------------------------------------------------


def _ports_free() -> None:
    busy = []
    for service, ports in EMULATOR_PORTS.items():
        for port in ports:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    busy.append(f"{port} ({service})")
    if busy:
        raise CheckFailed(f"ports already in use on 127.0.0.1: {', '.join(busy)}; the compose override fixes "
                          "them: stop what holds them")


@contextlib.contextmanager
def running(stack: ComposeStack, keep: bool, out: TextIO) -> Iterator[ComposeStack]:
    stack.down()  # a stack left by a killed earlier invocation
    try:
        stack.up()
        yield stack
    finally:
        if not keep:
            stack.down()
            print("Stopped and removed every container of the stack.", file=out, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dev/container-test", description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed for the run (default 600)")
    parser.add_argument("--keep", action="store_true", help="leave the containers up (docker-compose down later)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    STATE.mkdir(exist_ok=True)
    (STATE / ".gitignore").write_text("# everything here is dev/container-test's local state\n*\n")
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    sampler = Sampler()
    code = 1
    try:
        print("Building the images (cached layers are reused) ...", file=out, flush=True)
        images = build_images(STATE / "build-logs")
        timings["build"] = time.monotonic() - t0
        _ports_free()
        stack = ComposeStack(images, STATE)
        t1 = time.monotonic()
        with running(stack, args.keep, out):
            sampler.start()
            stack.wait_api(timeout=600)
            wait_url(f"{BIGQUERY}/bigquery/v2/projects/{PROJECT}/datasets", "BigQuery emulator", 300, stack,
                     "bigquery-emulator")
            wait_url(f"{GCS}/storage/v1/b/{BUCKET}", "GCS emulator", 300, stack, "gcs-emulator")
            conns = stack.apply_settings(DEV / "airflow_settings.yaml")
            stack.wait_for_dag(DAG_ID, timeout=180)
            timings["start"] = time.monotonic() - t1
            print(f"Stack up after {timings['start']:.1f}s (connections from airflow_settings.yaml: "
                  f"{', '.join(conns)}); {DAG_ID} loaded.", file=out, flush=True)
            t2 = time.monotonic()
            run_id = stack.trigger(DAG_ID)
            print(f"\nRun: {run_id}", file=out, flush=True)
            rows = follow_run(stack, run_id, out, args.timeout)
            timings["run"] = time.monotonic() - t2
            sampler.sample()
            print(f"\nRun {stack.run_state(DAG_ID, run_id)}. Summary:\n{format_summary(rows)}", file=out, flush=True)
            report = check_run(stack, run_id, rows, sampler)
            print("\nChecks:\n" + "\n".join(f"  ok  {line}" for line in report), file=out, flush=True)
            print(f"\nWhere to look:\nAirflow UI   {stack.api_url}  (user admin, password {stack.password})\n"
                  f"BigQuery     {BIGQUERY}/bigquery/v2/projects/{PROJECT}/datasets\n"
                  f"Containers   docker-compose --project-name {COMPOSE_PROJECT} ps", file=out, flush=True)
            code = 0
    except CheckFailed as exc:
        print(f"\nFAILED: {exc}", file=out, flush=True)
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        print(f"\ncontainer test failed: {type(exc).__name__}: {exc}", file=out, flush=True)
        code = 2
    finally:
        sampler.stop()
    peaks = ", ".join(f"{name.removeprefix(COMPOSE_PROJECT + '_')} {used / 2**20:.0f}"
                      for name, used in sorted(sampler.peak_by_container.items()))
    times = ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
    print(f"\nTimes: {times or '-'}; wall {time.monotonic() - t0:.1f}s.\n"
          f"Peak memory of the containers (docker stats every {sampler.interval:.0f}s): "
          f"{sampler.peak_total / 2**20:.0f} MiB in all; per container (MiB): {peaks or '-'}.\nExit code {code}.",
          file=out, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
