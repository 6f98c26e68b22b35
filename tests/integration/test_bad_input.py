"""Bad input, in one table: where each mistake fails, with which error, and a message naming cause and fix.

Every row drives the entry point a user hits, after checking that what comes before it succeeds:

* ``Parse``: DbtDag / DbtTaskGroup construction;
* ``Setup``: the DAG parses, then its ``dbt_setup_async`` task executes (dbt's capture of a small project against
  the BigQuery emulator, then the upload); ``Upload``: the same task's upload step, for mistakes only it can see;
* ``Node``: the setup's upload done, a model task's trigger runs with asyncio against the emulators, and its event
  goes to the task's ``execute_complete`` as on the worker when the task resumes.

Then it checks that nothing was left half-done: no file under the run's prefix after a failed setup, no BigQuery
job and no table after a refused node. README's bad-input table is this table, abridged.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from airflow.exceptions import AirflowException
from airflow.sdk import DAG
from airflow.sdk.api.datamodels._generated import DagRun
from airflow.triggers.base import TriggerEvent
from cosmos_async_triggers import auth, rest
from cosmos_async_triggers.bigquery import BigQueryNodeTrigger
from cosmos_async_triggers.layout import job_id_base, node_relpath, segment

from cosmos_async import (
    DbtDag,
    DbtTaskGroup,
    ExecutionConfig,
    ExecutionMode,
    GoogleCloudOauthProfileMapping,
    GoogleCloudServiceAccountDictProfileMapping,
    ProfileConfig,
    ProjectConfig,
    RenderConfig,
)
from cosmos_async.capture import Capture, CaptureError, NodeCapture, capture_project
from cosmos_async.dbt_invoke import dbt_workspace, invoke
from cosmos_async.errors import ConfigurationError, CosmosAsyncError, ManifestError, SelectionError
from cosmos_async.remote import RemoteStorageError, RemoteTarget, delete_run, upload_capture
from tests.integration.test_remote import HOSTILE
from tests.support.credentials import TokenEndpoint, service_account_key

CORNER_SHOP = Path(__file__).resolve().parents[2] / "dev" / "dags" / "dbt" / "corner_shop"
PROJECT = "demo-proj"
DATASET = "bad_input"
DAG_ID = "bad_input"
# BigQuery's limit on a query's length; the trigger refuses a longer script before submitting anything.
MAX_QUERY_CHARS = 1024 * 1024
MODELS = {
    "ok": "select 1 as x\n",
    "broken": "select no_such_column from unnest([1]) as n\n",
    # 1.2 million characters of one expression: over the limit by a sixth, and cheap for dbt's Jinja to render.
    "huge": "select {{ '1 + ' * 300000 }}1 as x\n",
}
# A capture for the rows about the upload: its content does not matter there, only that there is one.
ONE_MODEL = Capture(nodes={"model.p.m": NodeCapture(["select 1"])}, on_run_start=NodeCapture(),
                    on_run_end=NodeCapture())
# Names that would leave the run's prefix if used as path parts: parent and absolute paths, separators of either
# system, escapes that look like ours, NUL, non-ASCII.
ESCAPING_NAMES = [*HOSTILE, "/etc/passwd", "/", "..\\..\\x", "a\\b", "%2e%2e%2f", "~2E~2E", "nul\x00byte", "ü/../é"]


# ---- the world the rows run in ----------------------------------------------------------------------------


@dataclass
class World:
    """Emulators, connections, the dbt project and its capture: built once for the module."""

    root: Path
    bucket: str
    project_dir: Path
    bigquery: str = ""  # the emulator's endpoint, once started
    manifest: Path | None = None  # the small project's, from `dbt parse`
    capture: Capture | None = None
    early: dict[str, Future] = field(default_factory=dict)

    @property
    def remote_url(self) -> str:
        return f"file://{self.root}/remote"

    def files_under(self, target: RemoteTarget, run_id: str) -> list[str]:
        """Every file under the run's prefix, read through a connection that reaches the storage."""
        if target.url.startswith("gs://"):
            target = RemoteTarget(target.url, "emulators")
        fs, _ = target.filesystem()
        fs.invalidate_cache()
        prefix = fs._strip_protocol(target.run_prefix(DAG_ID, run_id))
        return fs.find(prefix) if fs.exists(prefix) else []

    def rest_get(self, path: str) -> dict[str, Any] | None:
        """GET on the BigQuery emulator's REST API; None for 404."""
        try:
            with urllib.request.urlopen(f"{self.bigquery}/bigquery/v2/projects/{PROJECT}/{path}", timeout=10) as r:
                return json.load(r)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise


def connection(storage: str, bigquery: str | None = None, **extra: Any) -> str:
    endpoints = {"storage_api_endpoint": storage, **({"bigquery_api_endpoint": bigquery} if bigquery else {})}
    return json.dumps({"conn_type": "google_cloud_platform", "extra": {"project": PROJECT, **endpoints, **extra}})


def write_project(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "dbt_project.yml").write_text(
        f"name: {DATASET}\nversion: '1.0'\nprofile: {DATASET}\nconfig-version: 2\n"
        f"models:\n  {DATASET}:\n    +materialized: table\n")
    (root / "models").mkdir()
    for name, sql in MODELS.items():
        (root / "models" / f"{name}.sql").write_text(sql)
    return root


def profile(conn_id: str, mapping: type = GoogleCloudServiceAccountDictProfileMapping) -> ProfileConfig:
    return ProfileConfig(profile_name=DATASET, target_name="dev",
                         profile_mapping=mapping(conn_id=conn_id, profile_args={"dataset": DATASET}))


@pytest.fixture(scope="module")
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, gcs_emulator,
          token_endpoint) -> Iterator[World]:
    root = tmp_path_factory.mktemp("bad-input")
    storage = gcs_emulator.endpoint
    w = World(root, gcs_emulator.extra["bucket"], write_project(root / "project"))
    refusing = TokenEndpoint(refuse=True)
    with pytest.MonkeyPatch.context() as mp, ThreadPoolExecutor(max_workers=2) as pool, socket.socket() as closed:
        # A port held bound but never listening: connecting is refused, and no server the session starts later
        # (emulator fronts, token endpoints bind port 0) can take it, as it could a port free_port() let go.
        closed.bind(("127.0.0.1", 0))
        mp.setenv("AIRFLOW_CONN_GCS_DOWN", connection(f"http://127.0.0.1:{closed.getsockname()[1]}", anonymous=True))
        # Rows whose failure waits out retries with backoff (gcsfs: ~30 s) start first, so that the wait overlaps
        # the BigQuery emulator's start and dbt's capture; their test collects the outcome. Only rows selected to
        # run (-k) start.
        selected = {item.callspec.id for item in request.session.items
                    if item.module is request.module and hasattr(item, "callspec")}
        for case in CASES:
            if case.stage.slow and case.id in selected:
                w.early[case.id] = pool.submit(case.stage.prepare(w, run_id_of(case)))
        # dbt's and dbt-bigquery's imports (~7 s) overlap the BigQuery emulator's start.
        preload = pool.submit(lambda: [importlib.import_module(m) for m in ("dbt.cli.main", "dbt.adapters.bigquery")])
        w.bigquery = request.getfixturevalue("bigquery_emulator").endpoint
        preload.result()
        key = service_account_key(token_endpoint.url)
        conns = {
            "emulators": connection(storage, w.bigquery, anonymous=True),
            "key_not_json": connection(storage, w.bigquery, keyfile_dict="{'type': 'service_account'"),
            "key_without_private_key": connection(storage, w.bigquery, keyfile_dict=json.dumps(
                {k: v for k, v in key.items() if k != "private_key"})),
            "no_keyfile": connection(storage, w.bigquery),
            "key_refused": connection(storage, w.bigquery,
                                      keyfile_dict=json.dumps(service_account_key(refusing.url))),
        }
        for conn_id, conn in conns.items():
            mp.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", conn)
        # Application Default Credentials must be unavailable for the rows that rely on them: a path that does
        # not exist makes google.auth.default() fail at once, before gcloud's config or a metadata server.
        mp.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(root / "no-adc.json"))
        for name in ("AIRFLOW__COSMOS__REMOTE_TARGET_PATH", "AIRFLOW__COSMOS__REMOTE_TARGET_PATH_CONN_ID"):
            mp.delenv(name, raising=False)
        auth.forget_tokens()  # the trigger keeps connections and tokens per process
        w.capture = capture_project(w.project_dir, profile("emulators"))
        with dbt_workspace(w.project_dir, profile("emulators")) as workspace:
            invoke(workspace, ["parse"])
            w.manifest = root / "manifest.json"
            w.manifest.write_bytes((workspace.target_dir / "manifest.json").read_bytes())
        # The dataset exists as after the DAG's on-run-start task, so a model's error is about its own SQL.
        urllib.request.urlopen(urllib.request.Request(
            f"{w.bigquery}/bigquery/v2/projects/{PROJECT}/datasets", method="POST",
            data=json.dumps({"datasetReference": {"projectId": PROJECT, "datasetId": DATASET}}).encode(),
            headers={"Content-Type": "application/json"}), timeout=10).close()
        yield w
    auth.forget_tokens()
    refusing.stop()


def run_id_of(case: Case) -> str:
    return f"manual__{case.id}"


# ---- stages: where a row's input is used ------------------------------------------------------------------


def corner_shop(world: World) -> ProjectConfig:
    return ProjectConfig(dbt_project_path=CORNER_SHOP, manifest_path=CORNER_SHOP / "manifest.json")


def small_project(world: World) -> ProjectConfig:
    return ProjectConfig(dbt_project_path=world.project_dir, manifest_path=world.manifest)


@dataclass
class Parse:
    """Construct a DbtDag (or a DbtTaskGroup in a DAG) in AIRFLOW_ASYNC mode, as the dag-processor does.

    Each stage splits in two: ``prepare`` does what happens before the stage (it must succeed: the row fails
    where its table says, not earlier) and returns the step that is expected to fail.
    """

    project: Callable[[World], ProjectConfig] = corner_shop
    render: RenderConfig = field(default_factory=RenderConfig)
    remote: str | None = "file:///tmp/cosmos-async-bad-input"  # AIRFLOW__COSMOS__REMOTE_TARGET_PATH; None: unset
    operator_args: dict[str, Any] = field(default_factory=dict)
    conn_id: str = "emulators"
    mapping: type = GoogleCloudServiceAccountDictProfileMapping
    group: bool = False
    slow = False

    def dag(self, world: World) -> DAG:
        kwargs = {"project_config": self.project(world), "profile_config": profile(self.conn_id, self.mapping),
                  "execution_config": ExecutionConfig(execution_mode=ExecutionMode.AIRFLOW_ASYNC),
                  "render_config": self.render, "operator_args": self.operator_args}
        with pytest.MonkeyPatch.context() as mp:
            if self.remote is not None:
                mp.setenv("AIRFLOW__COSMOS__REMOTE_TARGET_PATH", self.remote)
            if not self.group:
                return DbtDag(dag_id=DAG_ID, schedule=None, **kwargs)
            with DAG(DAG_ID, schedule=None) as dag:
                DbtTaskGroup(group_id="shop", **kwargs)
            return dag

    def prepare(self, world: World, run_id: str) -> Callable[[], Any]:
        return lambda: self.dag(world)

    def left_nothing(self, world: World, run_id: str) -> None:
        """Parsing writes nothing anywhere."""


@dataclass
class Setup(Parse):
    """The small project's DAG parses; its setup task (dbt's capture, then the upload to file://) fails."""

    project: Callable[[World], ProjectConfig] = small_project

    def prepare(self, world: World, run_id: str) -> Callable[[], Any]:
        dag = replace(self, operator_args={"remote_target_path": world.remote_url}).dag(world)
        # The worker's context holds the task SDK's DagRun; the setup task reads only its dag_id.
        context = {"dag_run": DagRun.model_construct(dag_id=DAG_ID, run_id=run_id), "run_id": run_id}
        return lambda: dag.task_dict["dbt_setup_async"].execute(context)

    def left_nothing(self, world: World, run_id: str) -> None:
        assert world.files_under(RemoteTarget.from_config(world.remote_url), run_id) == []


@dataclass
class Upload(Parse):
    """The DAG parses with the bucket's connection ``bucket_conn_id``; its setup task's last step, the upload of
    the capture to ``gs://``, fails (the rows skip the capture before it: it cannot notice these mistakes)."""

    bucket_conn_id: str = "emulators"
    slow: bool = False

    def target(self, world: World) -> RemoteTarget:
        return RemoteTarget.from_config(f"gs://{world.bucket}/bad-input", self.bucket_conn_id)

    def prepare(self, world: World, run_id: str) -> Callable[[], Any]:
        remote = {"remote_target_path": self.target(world).url, "remote_target_path_conn_id": self.bucket_conn_id}
        setup = replace(self, operator_args=remote).dag(world).task_dict["dbt_setup_async"]
        target = RemoteTarget.from_config(setup.remote_target_path, setup.remote_target_path_conn_id)
        return lambda: upload_capture(target, DAG_ID, run_id, ONE_MODEL, set(ONE_MODEL.nodes))

    def left_nothing(self, world: World, run_id: str) -> None:
        assert world.files_under(self.target(world), run_id) == []


class TaskInstanceXCom:
    """The one part of the task instance execute_complete uses: XCom, where it pushes each job's console link."""

    def __init__(self) -> None:
        self.pushed: list[tuple[str, Any]] = []

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed.append((key, value))


@dataclass
class Node(Parse):
    """A model's task of the small project's DAG, the triggerer's connection being ``conn_id``. Before it: the
    setup's upload of the real capture (``damage`` then changes it). Then: the task's trigger against the BigQuery
    emulator, and its execute_complete with the trigger's event, as on the worker."""

    project: Callable[[World], ProjectConfig] = small_project
    model: str = "ok"
    damage: Callable[[Path, dict[str, Any]], None] | None = None  # (run prefix dir, its index) -> None
    submits: bool = False  # the job is expected to reach BigQuery (and fail there)
    xcom: TaskInstanceXCom = field(default_factory=TaskInstanceXCom)

    def task_id(self) -> str:
        return f"{self.model}_run"

    def prepare(self, world: World, run_id: str) -> Callable[[], Any]:
        assert world.capture is not None
        target = RemoteTarget.from_config(world.remote_url)
        index = upload_capture(target, DAG_ID, run_id, world.capture, set(world.capture.nodes))
        if self.damage is not None:
            self.damage(Path(target.run_prefix(DAG_ID, run_id).removeprefix("file://")), index)
        # The profile keeps the emulator connection; operator_args give the triggerer's.
        operator_args = {"remote_target_path": target.url, "gcp_conn_id": self.conn_id, "poll_interval": 0.05}
        task = replace(self, conn_id="emulators", operator_args=operator_args).dag(world).task_dict[self.task_id()]
        run = {"dag_id": DAG_ID, "run_id": run_id, "task_id": task.task_id, "map_index": -1}
        trigger = BigQueryNodeTrigger(**task.trigger_kwargs(end_task=True, run=run))

        async def events() -> list[TriggerEvent]:
            try:
                return [event async for event in trigger.run()]
            finally:
                await rest.close_session()

        def node_task() -> Any:
            (event,) = asyncio.run(events())
            # A failure is a plain event even with end_task=True: the task resumes on a worker to raise it.
            assert type(event) is TriggerEvent, event
            return task.execute_complete({"ti": self.xcom}, event.payload)

        return node_task

    def left_nothing(self, world: World, run_id: str) -> None:
        job_id = f"{job_id_base(DAG_ID, self.task_id(), run_id)}_0_0"
        job = world.rest_get(f"jobs/{job_id}?location=US")
        if self.submits:
            assert job is not None and job["status"].get("errorResult"), job
            # The failed task links to BigQuery's page of the job.
            assert [key for key, link in self.xcom.pushed if job_id in link] == ["bigquery_job_link"]
        else:
            assert job is None, f"a job was submitted: {job}"
        assert world.rest_get(f"datasets/{DATASET}/tables/{self.model}") is None, "the model's table exists"


@dataclass
class Contained(Parse):
    """Not an error: the setup task uploads under such names and teardown deletes, inside the run's prefix."""

    names: list[str] = field(default_factory=list)

    def prepare(self, world: World, run_id: str) -> Callable[[], Any]:
        return lambda: self.upload_and_delete(world)

    def upload_and_delete(self, world: World) -> None:
        area = world.root / "contained"
        # The remote root sits deep enough that a name climbing out of it would still land inside ``area``.
        remote = area / "1" / "2" / "3" / "4" / "remote"
        target = RemoteTarget.from_config(f"file://{remote}")
        capture = Capture(nodes={name: NodeCapture(["select 1"]) for name in self.names},
                          on_run_start=NodeCapture(), on_run_end=NodeCapture())
        for name in self.names:
            upload_capture(target, name, name, capture, set(self.names))
            run_dir = remote / segment(name) / segment(name)
            written = sorted(p for p in area.rglob("*") if p.is_file())
            assert written and all(p.is_relative_to(run_dir) for p in written), (name, written)
            assert {p.name for p in (run_dir / "nodes").iterdir()} == {
                Path(node_relpath(n)).name for n in [*self.names, "on_run_start", "on_run_end"]}
            # Teardown removes exactly this run's files, so the next name starts from an empty area.
            assert delete_run(target, name, name) == len(written)
            assert not [p for p in area.rglob("*") if p.is_file()]


# ---- damage done to a run's files after the setup task --------------------------------------------------


def delete_sql(prefix: Path, index: dict[str, Any]) -> None:
    (prefix / index["nodes"]["model.bad_input.ok"]["path"]).unlink()


def tamper_sql(prefix: Path, index: dict[str, Any]) -> None:
    (prefix / index["nodes"]["model.bad_input.ok"]["path"]).write_text("drop schema bad_input cascade")


def index_path_outside(prefix: Path, index: dict[str, Any]) -> None:
    """Point the index entry at a file beyond the prefix whose checksum matches: only the path check stops it."""
    outside = prefix.parent / "elsewhere.sql"
    outside.write_text("drop schema bad_input cascade")
    entry = index["nodes"]["model.bad_input.ok"]
    entry.update(path="../elsewhere.sql", sha256=hashlib.sha256(outside.read_bytes()).hexdigest())
    (prefix / "index.json").write_text(json.dumps(index))


# ---- inputs used by the parse rows -----------------------------------------------------------------------


def manifest_copy(world: World, name: str, change: Callable[[dict[str, Any]], Any] | None,
                  text: str | None = None) -> ProjectConfig:
    path = world.root / name / "manifest.json"
    path.parent.mkdir(exist_ok=True)
    if text is None:
        data = json.loads((CORNER_SHOP / "manifest.json").read_text())
        change(data)
        text = json.dumps(data)
    path.write_text(text)
    return ProjectConfig(dbt_project_path=CORNER_SHOP, manifest_path=path)


def old_schema(data: dict[str, Any]) -> None:
    data["metadata"]["dbt_schema_version"] = "https://schemas.getdbt.com/dbt/manifest/v9.json"


def no_nodes(data: dict[str, Any]) -> None:
    data["nodes"], data["sources"] = {}, {}


# ---- the table ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    bad_input: str
    stage: Parse
    raises: type[BaseException] | None
    cause: str | None  # a part of the message naming what is wrong
    fix: str | None  # a part naming what to do; None where the message names none (see the note)
    also: tuple[str, ...] = ()  # further parts the message must hold
    note: str = ""


CASES = [
    # ---- DAG parse: the dag-processor reports an import error; no run can start
    Case("remote_path_unset", "remote target path not set", Parse(remote=None), ConfigurationError,
         cause="needs a remote target path", fix="set AIRFLOW__COSMOS__REMOTE_TARGET_PATH"),
    Case("remote_path_blank", "remote target path empty (blanks)", Parse(remote="   "), ConfigurationError,
         cause="needs a remote target path", fix="set AIRFLOW__COSMOS__REMOTE_TARGET_PATH"),
    Case("remote_path_s3", "remote target path `s3://…`", Parse(remote="s3://bucket/runs"), ConfigurationError,
         cause="unsupported scheme (s3://)", fix="to gs://bucket/prefix"),
    Case("remote_path_ftp", "remote target path `ftp://…` (per DAG, in operator_args)",
         Parse(operator_args={"remote_target_path": "ftp://host/runs"}), ConfigurationError,
         cause="unsupported scheme (ftp://)", fix="operator_args['remote_target_path']"),
    Case("remote_gs_without_conn", "`gs://` remote target path without a connection id",
         Parse(remote="gs://bucket/runs"), ConfigurationError,
         cause="needs a connection", fix="set AIRFLOW__COSMOS__REMOTE_TARGET_PATH_CONN_ID"),
    Case("project_dir_missing", "dbt project path missing (no manifest)",
         Parse(project=lambda w: ProjectConfig(dbt_project_path=w.root / "no_such_project")), CosmosAsyncError,
         cause="no dbt_project.yml in", fix="fix ProjectConfig(dbt_project_path=...)"),
    Case("manifest_not_json", "corrupt manifest.json (not JSON)",
         Parse(project=lambda w: manifest_copy(w, "not_json", None, text='{"metadata": {"dbt_schema_v')),
         ManifestError, cause="cannot be read as JSON", fix="regenerate it with `dbt parse`"),
    Case("manifest_old_version", "manifest.json of an unsupported schema version (v9)",
         Parse(project=lambda w: manifest_copy(w, "v9", old_schema)), ManifestError,
         cause="has manifest schema v9", fix="regenerate it with a supported dbt-core"),
    Case("select_matches_nothing", "`select` that matches no node",
         Parse(render=RenderConfig(select=["tag:does_not_exist"])), SelectionError,
         cause="RenderConfig(select=['tag:does_not_exist'], exclude=[]) selects no model, seed, snapshot or test "
               "of dbt project 'corner_shop'", fix="correct the selectors"),
    Case("exclude_everything", "`exclude` that removes every node (DbtTaskGroup)",
         Parse(render=RenderConfig(exclude=["corner_shop"]), group=True), SelectionError,
         cause="exclude=['corner_shop']) selects no model", fix="correct the selectors"),
    Case("select_only_ephemeral", "selection of an ephemeral model only",
         Parse(render=RenderConfig(select=["int_order_payments"])), SelectionError,
         cause="selects 1 node(s) of dbt project 'corner_shop'", fix="correct the selectors",
         also=("none of which becomes a task (ephemeral models are inlined",)),
    Case("project_without_nodes", "project (manifest) without any model",
         Parse(project=lambda w: manifest_copy(w, "empty", no_nodes)), ConfigurationError,
         cause="leads to no model, seed, snapshot or test of dbt project 'corner_shop'",
         fix="point it at the project (or the manifest) that holds your models"),
    # ---- setup task: it fails before uploading anything, so no node task runs
    Case("project_dir_missing_with_manifest", "dbt project path missing, manifest given",
         Setup(project=lambda w: ProjectConfig(dbt_project_path=w.root / "no_such_project",
                                               manifest_path=w.manifest)), CosmosAsyncError,
         cause="no dbt_project.yml in", fix="fix ProjectConfig(dbt_project_path=...)",
         note="the DAG parses from the manifest; the setup task needs the project"),
    Case("key_not_json", "`keyfile_dict` that is not JSON", Setup(conn_id="key_not_json"), ConfigurationError,
         cause="'keyfile_dict' is not valid JSON", fix="paste the key file's content"),
    Case("key_without_private_key", "`keyfile_dict` without `private_key`",
         Setup(conn_id="key_without_private_key"), ConfigurationError,
         cause="it lacks private_key", fix="paste the whole JSON key file"),
    Case("no_keyfile", "service-account profile mapping, connection without `keyfile_dict`",
         Setup(conn_id="no_keyfile"), ConfigurationError,
         cause="has no 'keyfile_dict' extra", fix="use GoogleCloudOauthProfileMapping"),
    Case("key_refused", "key refused by the token endpoint (`invalid_grant`)", Setup(conn_id="key_refused"),
         CaptureError, cause="invalid_grant", fix="create a new key for the service account"),
    Case("adc_unavailable", "no key and no Application Default Credentials",
         Setup(conn_id="no_keyfile", mapping=GoogleCloudOauthProfileMapping), CaptureError,
         cause="no-adc.json was not found", fix="make them available where the setup task runs"),
    Case("remote_conn_unknown", "remote target path connection id that does not exist",
         Upload(bucket_conn_id="no_such_conn"), ConfigurationError,
         cause="Airflow connection 'no_such_conn' cannot be read",
         fix="fix AIRFLOW__COSMOS__REMOTE_TARGET_PATH_CONN_ID"),
    Case("bucket_key_without_private_key", "`keyfile_dict` without `private_key`, on the bucket's connection",
         Upload(bucket_conn_id="key_without_private_key"), ConfigurationError,
         cause="it lacks private_key", fix="paste the whole JSON key file"),
    Case("bucket_unreachable", "bucket unreachable (storage endpoint on a closed port)",
         Upload(bucket_conn_id="gcs_down", slow=True), RemoteStorageError,
         cause="Cannot connect to host 127.0.0.1", fix="that its endpoint is reachable from the worker",
         note="after gcsfs's retries, ~30 s"),
    Case("names_escape_prefix", "DAG ids, run ids, node ids with `../`, absolute paths, odd characters",
         Contained(ESCAPING_NAMES), None, cause=None, fix=None,
         note="each name is one encoded path segment: files stay in {root}/{dag}/{run}/"),
    # ---- node task: the trigger refuses or BigQuery fails the job; the task fails with the message
    Case("sql_missing", "model's SQL file missing under the run prefix", Node(damage=delete_sql),
         AirflowException, cause="the SQL of model.bad_input.ok is missing at", fix="re-run the setup task"),
    Case("sql_tampered", "model's SQL changed after setup (sha256 differs from the index)",
         Node(damage=tamper_sql), AirflowException,
         cause="does not match the index", fix="re-run the setup task", also=("model.bad_input.ok",)),
    Case("index_path_escapes", "index entry whose path leaves the run prefix (`../`)",
         Node(damage=index_path_outside), AirflowException,
         cause="has no valid 'path' ('../elsewhere.sql')", fix="re-run the setup task"),
    Case("invalid_sql", "invalid SQL in a model", Node(model="broken", submits=True), AirflowException,
         cause="model model.bad_input.broken failed in BigQuery job", fix=None, also=("no_such_column",),
         note="BigQuery's message reaches the task, naming the node; no fix beyond BigQuery's own words"),
    Case("huge_sql", "model whose SQL exceeds BigQuery's 1,024K-character query limit", Node(model="huge"),
         AirflowException, cause="model.bad_input.huge: its SQL has", fix="split it into smaller",
         also=("characters, more than the", str(MAX_QUERY_CHARS))),
    Case("key_refused_in_triggerer", "key refused when the triggerer asks for a token",
         Node(conn_id="key_refused"), AirflowException,
         cause="cannot get an access token: RefreshError: ('invalid_grant", fix="put a valid key into the connection"),
    Case("adc_unavailable_in_triggerer", "no key and no Application Default Credentials in the triggerer",
         Node(conn_id="no_keyfile"), AirflowException,
         cause="has no keyfile_dict/key_path, so it uses Application Default Credentials: Application Default "
               "Credentials failed",
         fix="Make them available to the triggerer"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, world: World) -> None:
    run_id = run_id_of(case)

    early = world.early.get(case.id)
    drive = early.result if early is not None else case.stage.prepare(world, run_id)

    if case.raises is None:
        drive()
    else:
        with pytest.raises(case.raises) as caught:
            drive()
        assert type(caught.value) is case.raises  # exactly: the table documents which error users see
        message = str(caught.value)
        assert case.cause in message, message
        for part in (case.fix, *case.also):
            if part is not None:
                assert part in message, message
    case.stage.left_nothing(world, run_id)

