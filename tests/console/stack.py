"""The deployment path for tests, all real: the session's sidecar and managed server, and a
Celery worker process on a queue of its own that shares the console's test database (a file,
see tests/conftest.py). Tests using it need ``transactional_db``: the worker sees only what
is committed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import psycopg
import pytest
from django.db import connection

from console.deployments.models import Deployment
from console.workers import all_queues, worker_command
from inference import catalog as model_catalog
from inference.catalog import CATALOG_PATH
from inference.client import InferenceError
from inference.process import ChildProcess
from serverparams.apply import auto_conf
from serverparams.server import ManagedServer
from tests.console.servers import restore_auto_conf
from tests.fixtures.pg import allow_extensions
from tests.fixtures.realmodel import TINY_URI, tiny_entry
from tests.fixtures.sidecar import SidecarProcess

PROJECT_ROOT = Path(__file__).resolve().parents[2]
E5_URI = "multilingual-e5-small:v1"
HUGE_URI = "huge-model:v1"
# The tiny model claiming more memory than any machine has.
HUGE = tiny_entry(uri=HUGE_URI, memory_mb=100_000_000)
# The e5 entry with the tiny model's shape, so that the Hub path runs against a FakeHub
# serving the generated model laid out like intfloat/multilingual-e5-small.
E5_FROM_FAKE_HUB = tiny_entry(
    uri=E5_URI,
    default_source="hub",
    sources={"hub": {"repo_id": "intfloat/multilingual-e5-small", "onnx": "onnx/model.onnx"}},
)
WORKER_START_S = 60.0


def deploy_catalog(path: Path, *extra: dict[str, object]) -> Path:
    """A catalog whose default is the tiny model (deployed from a local folder), followed by
    ``extra`` entries and the shipped catalog's models."""
    replaced = {entry["uri"] for entry in extra}
    shipped = [
        m for m in json.loads(CATALOG_PATH.read_text())["models"] if m["uri"] not in replaced
    ]
    models = [tiny_entry(), *extra, *shipped]
    path.write_text(json.dumps({"format": 1, "default": TINY_URI, "models": models}))
    return path


@dataclass
class Worker:
    """``celery worker`` as production starts it (``worker_command``: prefork pool) on the
    queues under the prefix ``queue``; ``kill`` hits the pool's processes too, as a crash of
    the machine or container would."""

    env: dict[str, str]
    log_path: Path
    queue: str
    child: ChildProcess | None = None
    restarts: int = field(default=0)
    beat: bool = False  # embed Celery beat, which sends the sweeper (one per installation)

    @property
    def hostname(self) -> str:
        """The worker's node name, as its tasks see it (``request.hostname``)."""
        return f"{self.queue}-{self.restarts}@{socket.gethostname()}"

    def start(self) -> None:
        argv = worker_command(
            queues=all_queues(self.queue),
            hostname=f"{self.queue}-{self.restarts}@%h",
            beat=self.beat,
            quiet=True,
        )
        self.child = ChildProcess("worker", argv, self.log_path, env=self.env, cwd=PROJECT_ROOT)
        self.child.wait_ready(lambda: " ready." in self.child.output(), WORKER_START_S)

    def kill(self) -> None:
        assert self.child is not None
        if self.child.alive():
            pool = psutil.Process(self.child.pid).children(recursive=True)
            for process in pool:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
        self.child.kill()

    def restart(self, **env: str) -> None:
        """Start again (after kill or stop), with ``env`` added to its environment."""
        self.restarts += 1
        self.env.update(env)
        self.start()

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(grace=20)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Stack:
    server: ManagedServer
    sidecar: SidecarProcess
    worker: Worker
    catalog_path: Path
    models_dir: Path

    def wait(self, deployment: Deployment | int, timeout: float = 120.0) -> Deployment:
        """Wait until the deployment reaches a terminal state; fail with the worker's log."""
        pk = deployment if isinstance(deployment, int) else deployment.pk
        deadline = time.monotonic() + timeout
        while True:
            row = Deployment.objects.get(pk=pk)
            if row.is_terminal:
                return row
            if time.monotonic() > deadline:
                pytest.fail(
                    f"deployment #{pk} still {row.state} after {timeout:g} s; worker log:\n"
                    + self.worker.log()[-6000:]
                )
            time.sleep(0.2)

    def wait_for(self, what: str, check: object, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():  # type: ignore[operator]
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{what} did not happen within {timeout:g} s; worker log:\n"
                    + self.worker.log()[-6000:]
                )
            time.sleep(0.1)

    def allowlist(self) -> str:
        with self.server.connect() as conn:
            row = conn.execute("SHOW azure.extensions").fetchone()
        return row[0] if row else ""


def worker_env(
    server: ManagedServer, sidecar: SidecarProcess, catalog_path: Path, queue: str,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:  # fmt: skip
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}",
        "VAR_DIR": str(server.var_dir),
        "MANAGED_PG_PORT": str(server.port),
        "INFERENCE_URL": sidecar.url,
        "INFERENCE_CATALOG": str(catalog_path),
        "CELERY_QUEUE": queue,
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("MANAGED_DATABASE_URL", None)
    env.pop("DEFAULT_MODEL", None)
    env.update(extra or {})
    return env


@contextlib.contextmanager
def fresh_deployment_state(server: ManagedServer, sidecar: SidecarProcess) -> Iterator[Path]:
    """An empty allowlist and model store (yielded) on the shared server; afterwards the
    allowlist, the sidecar's registrations, the store and the added models' catalog are put
    back as they were."""
    registered_before = {m["model_uri"] for m in sidecar.client.models()}
    with server.connect() as conn:
        snapshot = auto_conf(conn)
        # Whatever earlier tests allowed, each starts from a new server's empty allowlist.
        allow_extensions(conn)
    models_dir = server.var_dir / "models"
    try:
        yield models_dir
    finally:
        for model in sidecar.client.models():
            if model["model_uri"] not in registered_before:
                with contextlib.suppress(InferenceError):
                    sidecar.client.unregister(model["model_uri"])
        with server.connect() as conn:
            restore_auto_conf(conn, snapshot)
        shutil.rmtree(models_dir, ignore_errors=True)
        shutil.rmtree(server.var_dir / "catalog", ignore_errors=True)


def configure_like_the_worker(
    server: ManagedServer,
    sidecar: SidecarProcess,
    catalog_path: Path,
    settings: object,
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    """Point this test process's console at ``server``, ``sidecar`` and the catalog at
    ``catalog_path``, on a fresh Celery queue (returned) that a worker started with
    ``worker_env`` takes its tasks from."""
    queue = f"tests-{uuid.uuid4().hex[:8]}"
    for name, value in {
        "VAR_DIR": str(server.var_dir),
        "MANAGED_PG_PORT": str(server.port),
        "INFERENCE_CATALOG": str(catalog_path),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MANAGED_DATABASE_URL", raising=False)
    monkeypatch.delenv("DEFAULT_MODEL", raising=False)
    settings.INFERENCE_URL = sidecar.url  # type: ignore[attr-defined]
    settings.INFERENCE_TOKEN = ""  # type: ignore[attr-defined]
    settings.CELERY_TASK_DEFAULT_QUEUE = queue  # type: ignore[attr-defined]
    model_catalog.catalog.cache_clear()
    return queue


@pytest.fixture
def stack(
    request: pytest.FixtureRequest,
    transactional_db: None,
    managed_pg: ManagedServer,
    sidecar: SidecarProcess,
    settings: object,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[Stack]:
    """A worker (with beat, as ``make run`` starts it) on fresh queues, the console configured
    like it; afterwards the allowlist,
    the sidecar's registrations and the model store are as they were."""
    marker = request.node.get_closest_marker("worker_env")
    extra: dict[str, str] = dict(marker.args[0]) if marker else {}
    catalog_path = deploy_catalog(tmp_path / "catalog.json", E5_FROM_FAKE_HUB, HUGE)
    queue = configure_like_the_worker(managed_pg, sidecar, catalog_path, settings, monkeypatch)
    env = worker_env(managed_pg, sidecar, catalog_path, queue, extra)
    worker = Worker(env=env, log_path=tmp_path / "worker.log", queue=queue, beat=True)
    with fresh_deployment_state(managed_pg, sidecar) as models_dir:
        worker.start()
        try:
            yield Stack(managed_pg, sidecar, worker, catalog_path, models_dir)
        finally:
            worker.stop()
            model_catalog.catalog.cache_clear()


def scratch_database(server: ManagedServer, name: str) -> None:
    """(Re)create an empty database ``name`` on the managed server."""
    with server.connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(server: ManagedServer, name: str) -> None:
    try:
        with server.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except psycopg.Error:
        pass
