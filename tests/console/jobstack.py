"""Embedding jobs on the real parts, for the tests of the engine and of its pages: a scratch
database on the managed server with vector and azure_local_ai allowed, a catalog that knows
the tiny model (``tiny:v1``) and a second one (``tiny-cls:v1``), a fresh Celery queue and
worker processes on it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from console.jobs import objects, service
from console.jobs.models import EmbeddingJob
from inference import catalog as model_catalog
from serverparams.apply import auto_conf
from serverparams.server import ManagedServer
from tests.console.servers import restore_auto_conf
from tests.console.stack import (
    Worker,
    configure_like_the_worker,
    deploy_catalog,
    drop_database,
    scratch_database,
    worker_env,
)
from tests.fixtures.pg import allow_extensions
from tests.fixtures.realmodel import tiny_entry
from tests.fixtures.sidecar import TINY_URI, SidecarProcess, make_store_dir

CLS_URI = "tiny-cls:v1"  # the second model of these tests: same size, other vectors


@dataclass
class Jobs:
    server: ManagedServer
    database: str
    env: dict[str, str]
    tmp_path: Path
    queue: str
    workers: list[Worker] = field(default_factory=list)

    def worker(self, **env: str) -> Worker:
        """Start a worker on the stack's queue, with ``env`` added to its environment."""
        started = Worker(
            env={**self.env, **env},
            log_path=self.tmp_path / f"worker-{len(self.workers)}.log",
            queue=self.queue,
            restarts=100 * len(self.workers),
        )
        started.start()
        self.workers.append(started)
        return started

    def connect(self) -> psycopg.Connection:
        return self.server.connect(self.database)

    def sql(self, query: str, params: list[object] | None = None) -> list[tuple]:
        with self.connect() as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def wait(self, what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                logs = "\n".join(w.log()[-4000:] for w in self.workers)
                pytest.fail(f"{what} did not happen within {timeout:g} s; worker logs:\n{logs}")
            time.sleep(0.1)

    def wait_synced(self, job: EmbeddingJob, timeout: float = 60.0) -> service.Progress:
        def synced() -> bool:
            p = service.progress(job)
            return p.pending == 0 and p.done + p.failed == p.total

        self.wait(f"job #{job.pk} in sync", synced, timeout)
        return service.progress(job)

    def table(self, name: str, rows: int, *, body: Callable[[int], str] | None = None) -> None:
        make = body or (lambda i: f"body of row {i}")
        with self.connect() as conn:
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (id bigint PRIMARY KEY, title text, body text,"
                    " views integer NOT NULL DEFAULT 0)"
                ).format(sql.Identifier(name))
            )
            with conn.cursor() as cursor:
                cursor.executemany(
                    sql.SQL("INSERT INTO {} (id, title, body) VALUES (%s, %s, %s)").format(
                        sql.Identifier(name)
                    ),
                    [(i, f"title {i}", make(i)) for i in range(1, rows + 1)],
                )

    def create(self, table: str = "docs", **kwargs: object) -> EmbeddingJob:
        request: dict[str, object] = {
            "database": self.database,
            "table": table,
            "key": "id",
            "columns": ["title", "body"],
            "text_format": "{title}: {body}",
            "model_uri": TINY_URI,
            "column": "embedding",
            **kwargs,
        }
        return service.create(**request)  # type: ignore[arg-type]

    def stamps(self, job: EmbeddingJob) -> dict[int, int]:
        """key -> how many times the job embedded it."""
        n = objects.Names(job.pk)
        with self.connect() as conn:
            rows = conn.execute(
                sql.SQL("SELECT key, embeddings FROM {}").format(n.stamps)
            ).fetchall()
        return dict(rows)

    def mismatches(self, job: EmbeddingJob, table: str = "docs") -> int:
        """Rows whose vector is not create_embeddings of their current text (or missing)."""
        rows = self.sql(
            sql.SQL(
                "SELECT count(*) FROM {t} WHERE embedding IS NULL OR (embedding <=>"
                " azure_local_ai.create_embeddings(%s, {text})::vector) > 1e-5"
            )
            .format(t=sql.Identifier(table), text=objects.text_expression(job))
            .as_string(),
            [TINY_URI],
        )
        return rows[0][0]


@pytest.fixture
def jobs(
    transactional_db: None,
    managed_pg: ManagedServer,
    sidecar: SidecarProcess,
    settings: object,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[Jobs]:
    """A scratch database on the managed server with vector and azure_local_ai allowed, a
    catalog that knows ``tiny:v1``, and a fresh Celery queue; ``jobs.worker()`` starts a worker
    on it. Afterwards the workers stop, the database goes and the allowlist is put back."""
    catalog_path = deploy_catalog(
        tmp_path / "catalog.json",
        tiny_entry(uri=TINY_URI),
        tiny_entry(uri=CLS_URI, pooling="cls", title="Tiny test model, CLS pooling"),
    )
    queue = configure_like_the_worker(managed_pg, sidecar, catalog_path, settings, monkeypatch)
    database = f"jobs_{uuid.uuid4().hex[:8]}"
    with managed_pg.connect() as conn:
        snapshot = auto_conf(conn)
        allow_extensions(conn, "vector", "azure_local_ai")
    scratch_database(managed_pg, database)
    env = worker_env(managed_pg, sidecar, catalog_path, queue)
    state = Jobs(managed_pg, database, env, tmp_path, queue)
    try:
        yield state
    finally:
        # A paused job's runner ends its batch loop at once, so the workers stop quickly.
        EmbeddingJob.objects.update(state=EmbeddingJob.State.PAUSED)
        for worker in state.workers:
            worker.stop()
        drop_database(managed_pg, database)
        with managed_pg.connect() as conn:
            restore_auto_conf(conn, snapshot)
        model_catalog.catalog.cache_clear()


@pytest.fixture
def cls_model(sidecar: SidecarProcess, tiny_cls_model_dir: Path, tmp_path: Path) -> Iterator[str]:
    """The second model, deployed to the sidecar for one test."""
    store = make_store_dir(tiny_cls_model_dir, tmp_path / "cls-store", uri=CLS_URI)
    sidecar.client.register(CLS_URI, str(store))
    try:
        yield CLS_URI
    finally:
        sidecar.client.unregister(CLS_URI)
