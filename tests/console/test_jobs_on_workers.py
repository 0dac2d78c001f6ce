"""Jobs that embed on the workers: several worker "machines" on this one, each a Celery
worker with a sidecar of its own (``WORKER_INFERENCE_URL``), sharing the real managed server,
its sidecar (which serves ``tiny:v1``) and one job."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from pathlib import Path

import httpx
import psutil
import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from psycopg import sql

from console.jobs import objects, onworker, runner, service
from console.jobs.models import EmbeddingJob, JobRunner, WorkerRefusal
from inference.client import InferenceClient, InferenceUnavailable
from inference.config import PROJECT_ROOT
from inference.process import ChildProcess, free_port
from tests.console.jobstack import Jobs
from tests.fixtures.sidecar import TINY_URI, SidecarProcess, metric_value, start_sidecar


@pytest.fixture
def worker_sidecars(tmp_path: Path) -> Iterator[list[SidecarProcess]]:
    """Two sidecars with nothing registered, one per worker machine."""
    started = [start_sidecar(tmp_path / f"worker-sidecar-{i}") for i in range(2)]
    try:
        yield started
    finally:
        for one in started:
            one.stop()


def texts_embedded(sidecar: SidecarProcess) -> float:
    """Texts the sidecar has embedded with tiny:v1 since it started."""
    text = httpx.get(f"{sidecar.url}/metrics", timeout=10).text
    return metric_value(text, "inference_batch_size_sum", model=TINY_URI)


def provenance(jobs: Jobs, job: EmbeddingJob) -> dict[str, int]:
    rows = jobs.sql(
        sql.SQL("SELECT embedded_by, count(*) FROM {} GROUP BY 1")
        .format(objects.Names(job.pk).stamps)
        .as_string()
    )
    return dict(rows)


def test_workers_embed_with_their_own_sidecars_and_the_server_only_writes(
    jobs: Jobs,
    sidecar: SidecarProcess,
    worker_sidecars: list[SidecarProcess],
    admin_client: Client,
) -> None:
    jobs.table("docs", 600)
    workers = [jobs.worker(WORKER_INFERENCE_URL=s.url) for s in worker_sidecars]
    server_before = texts_embedded(sidecar)
    job = jobs.create(batch_size=16, workers=2, embed_on="worker")
    progress = jobs.wait_synced(job, timeout=120)
    assert progress == service.Progress(total=600, done=600, pending=0, failed=0)
    # Not one text went to the server's sidecar; each worker's own embedded its share.
    assert texts_embedded(sidecar) == server_before
    shares = [texts_embedded(s) for s in worker_sidecars]
    assert sum(shares) == 600 and min(shares) > 0
    # Each worker registered the model from the server's files, and serves the same ones.
    served = sidecar.client.model(TINY_URI)
    for own in worker_sidecars:
        theirs = own.client.model(TINY_URI)
        assert theirs["files"] == served["files"] and theirs["precision"] == served["precision"]
    # Every row once, with the vector create_embeddings gives on the server.
    stamps = jobs.stamps(job)
    assert len(stamps) == 600 and set(stamps.values()) == {1}
    assert jobs.mismatches(job) == 0
    by = provenance(jobs, job)
    names = {w.hostname for w in workers}
    assert set(by) == names and sum(by.values()) == 600
    assert not WorkerRefusal.objects.filter(job=job).exists()

    # Writes that follow go the same way; the page names who embedded them.
    server_before = texts_embedded(sidecar)  # the check above embedded on the server
    jobs.sql("INSERT INTO docs (id, title, body) SELECT i, 'new', 'row ' || i FROM"
             " generate_series(601, 640) AS i")  # fmt: skip
    jobs.wait_synced(job)
    assert texts_embedded(sidecar) == server_before
    assert jobs.mismatches(job) == 0
    assert sum(provenance(jobs, job).values()) == 640
    page = admin_client.get(f"/jobs/{job.pk}/").content.decode()
    assert "The workers: each one's own sidecar" in page
    assert 'id="job-embedders"' in page and workers[0].hostname in page


def test_a_worker_killed_mid_batch_leaves_every_row_embedded_exactly_once_by_the_other(
    jobs: Jobs, worker_sidecars: list[SidecarProcess]
) -> None:
    jobs.table("docs", 3000)
    workers = [jobs.worker(WORKER_INFERENCE_URL=s.url) for s in worker_sidecars]
    job = jobs.create(batch_size=16, workers=2, embed_on="worker")
    with jobs.connect() as holder:
        # An uncommitted stamp for row 1500 holds the batch that embedded and wrote it: the
        # SIGKILL of its worker lands inside that batch's transaction.
        holder.execute("BEGIN")
        holder.execute(
            sql.SQL("INSERT INTO {} (key, model, embedded_at) VALUES (1500, 'held', now())").format(
                objects.Names(job.pk).stamps
            )
        )

        def waiting_batch() -> list[tuple]:
            return jobs.sql(
                "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND state = 'active'"
            )

        jobs.wait("a batch waiting mid-transaction", lambda: bool(waiting_batch()))
        held_by = waiting_batch()[0][0]
        # application_name is cut at 63 bytes: the node's name before its host is enough.
        victim = next(w for w in workers if w.hostname.partition("@")[0] + "@" in held_by)
        survivor = next(w for w in workers if w is not victim)
        victim.kill()
        holder.execute("ROLLBACK")
    progress = jobs.wait_synced(job, timeout=180)
    assert progress == service.Progress(total=3000, done=3000, pending=0, failed=0)
    stamps = jobs.stamps(job)
    assert len(stamps) == 3000 and set(stamps.values()) == {1}
    assert jobs.mismatches(job) == 0
    by = provenance(jobs, job)
    assert by[survivor.hostname] > 1500 and set(by) <= {victim.hostname, survivor.hostname}


def test_a_worker_whose_sidecar_serves_other_files_refuses_and_the_other_embeds(
    jobs: Jobs,
    worker_sidecars: list[SidecarProcess],
    tiny_cls_model_dir: Path,
    admin_client: Client,
) -> None:
    odd, good = worker_sidecars
    # The same name, other weights: its vectors would not be the server's.
    odd.client.register(TINY_URI, str(tiny_cls_model_dir))
    jobs.table("docs", 300)
    refuser = jobs.worker(WORKER_INFERENCE_URL=odd.url)
    job = jobs.create(batch_size=16, workers=2, embed_on="worker")
    jobs.wait("the refusal recorded", lambda: WorkerRefusal.objects.filter(job=job).exists())
    assert service.progress(job).done == 0  # the refusing worker embedded nothing
    embedder = jobs.worker(WORKER_INFERENCE_URL=good.url)
    progress = jobs.wait_synced(job, timeout=120)
    assert progress.done == 300 and progress.failed == 0
    assert provenance(jobs, job) == {embedder.hostname: 300}
    assert jobs.mismatches(job) == 0
    refusal = WorkerRefusal.objects.get(job=job)
    assert refusal.worker == refuser.hostname
    assert "other files" in refusal.reason and "sha256" in refusal.reason
    assert odd.url in refusal.reason

    page = admin_client.get(f"/jobs/{job.pk}/").content.decode()
    assert 'id="job-refusals"' in page and refuser.hostname in page
    listed = admin_client.get("/jobs/").content.decode()
    assert "on the workers, some refusing" in listed
    out = StringIO()
    call_command("embedjob", "status", str(job.pk), stdout=out)
    assert f"worker {refuser.hostname} refuses its batches" in out.getvalue()

    # Back to the server: the refusals go, the next writes are the server's.
    response = admin_client.post(f"/jobs/{job.pk}/embed-on/", {"embed_on": "server"})
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.embed_on == "server" and not WorkerRefusal.objects.filter(job=job).exists()
    jobs.sql("UPDATE docs SET body = 'changed' WHERE id <= 10")
    jobs.wait_synced(job)
    assert provenance(jobs, job) == {embedder.hostname: 290, "server": 10}
    bad = admin_client.post(f"/jobs/{job.pk}/embed-on/", {"embed_on": "moon"})
    assert bad.status_code == 409 and "where to embed must be one of" in bad.content.decode()


def test_check_model_registers_what_the_sidecar_lacks_and_refuses_what_it_cannot_match(
    sidecar: SidecarProcess, worker_sidecars: list[SidecarProcess], tmp_path: Path
) -> None:
    served = sidecar.client.model(TINY_URI)
    with InferenceClient(worker_sidecars[0].url) as own:
        onworker.check_model(own, served)  # registered from the server's files, and loaded
        assert own.model(TINY_URI)["loaded"] is True
        onworker.check_model(own, served)  # the second time, nothing to do
    with InferenceClient(worker_sidecars[1].url) as own:
        elsewhere = {**served, "model_path": str(tmp_path / "not-here")}
        with pytest.raises(onworker.WorkerRefused, match="are not on this machine"):
            onworker.check_model(own, elsewhere)
        with pytest.raises(onworker.WorkerRefused, match="does not have"):
            onworker.check_model(own, {**served, "model_path": None})
    with (
        InferenceClient("http://127.0.0.1:9") as nowhere,
        pytest.raises(onworker.WorkerRefused, match="cannot be reached"),
    ):
        onworker.check_model(nowhere, served)
    int8 = {**served, "precision": "int8"}
    assert onworker.differences(int8, served) == ["precision fp32 where the server has int8"]
    other = {**served, "files": {**served["files"], "extra.bin": "0" * 64}}
    assert onworker.differences(other, served) == ["other files (extra.bin differ in sha256)"]
    assert "lists none" in onworker.differences({**served, "files": {}}, served)[0]


def test_a_text_the_workers_sidecar_refuses_fails_its_row_only(
    jobs: Jobs, worker_sidecars: list[SidecarProcess]
) -> None:
    jobs.table("docs", 30, body=lambda i: "" if i == 7 else f"body {i}")
    jobs.worker(WORKER_INFERENCE_URL=worker_sidecars[0].url)
    job = jobs.create(columns=["body"], text_format="", max_attempts=1, embed_on="worker")
    progress = jobs.wait_synced(job)
    assert progress == service.Progress(total=30, done=29, pending=0, failed=1)
    ((key, reason, _),) = service.failures(job)
    assert key == 7 and "on the worker" in reason


def test_the_form_and_embedjob_take_where_to_embed(jobs: Jobs) -> None:
    jobs.table("docs", 5)
    out = StringIO()
    call_command(
        "embedjob", "create", "--database", jobs.database, "--table", "docs", "--key", "id",
        "--columns", "body", "--model", TINY_URI, "--column", "embedding", "--embed-on", "worker",
        stdout=out,
    )  # fmt: skip
    job = EmbeddingJob.objects.get()
    assert job.embed_on == "worker"
    call_command("embedjob", "embed-on", str(job.pk), "server", stdout=out)
    job.refresh_from_db()
    assert job.embed_on == "server" and "now embeds on the server" in out.getvalue()
    with pytest.raises(service.JobError, match="where to embed must be one of server, worker"):
        jobs.create(table="docs", column="other", embed_on="gpu")


def test_a_slot_whose_worker_died_mid_run_is_nudged_once_its_run_is_long_overdue(
    jobs: Jobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs.table("docs", 5)
    job = jobs.create()
    long_ago = timezone.now() - runner.ABANDONED_AFTER - timedelta(seconds=5)
    JobRunner.objects.update_or_create(
        job=job, slot=0, defaults={"next_task": "", "started_at": long_ago}
    )
    sent: list[tuple[int, int, bool]] = []
    monkeypatch.setattr(
        runner.dispatch,
        "run_job_slot",
        lambda job_id, slot, *, nudge, countdown=0: sent.append((job_id, slot, nudge)),
    )
    runner.nudge_abandoned()
    assert sent == [(job.pk, 0, True)]
    runner.nudge_abandoned()  # claimed: one nudge per period
    assert sent == [(job.pk, 0, True)]
    # A slot that started a moment ago is running, not lost.
    JobRunner.objects.filter(job=job).update(started_at=timezone.now())
    runner.nudge_abandoned()
    assert len(sent) == 1


def test_manage_py_worker_with_a_sidecar_is_a_worker_machine_and_sigterm_stops_both(
    jobs: Jobs, sidecar: SidecarProcess, tmp_path: Path
) -> None:
    """What each compose worker container runs: ``manage.py worker --role jobs --sidecar``."""
    port = free_port()
    state = tmp_path / "machine"
    env = {**jobs.env, "WORKER_SIDECAR_DIR": str(state), "WORKER_SIDECAR_PORT": str(port)}
    env.pop("WORKER_INFERENCE_URL", None)
    machine = ChildProcess(
        "worker machine",
        [sys.executable, "manage.py", "worker", "--role", "jobs", "--sidecar"],
        tmp_path / "machine.log",
        env=env,
        cwd=PROJECT_ROOT,
    )
    try:
        machine.wait_ready(lambda: "worker:" in machine.output(), 120)
        jobs.table("docs", 200)
        server_before = texts_embedded(sidecar)
        job = jobs.create(batch_size=16, workers=2, embed_on="worker")
        jobs.wait_synced(job, timeout=120)
        assert texts_embedded(sidecar) == server_before
        assert provenance(jobs, job) == {f"jobs@{socket.gethostname()}": 200}
        own = InferenceClient(f"http://127.0.0.1:{port}")
        with own:
            assert own.model(TINY_URI)["loaded"] is True
        # Both logs, echoed to the command's output (a container's log) as they are written.
        assert (state / "log" / "worker-jobs.log").exists()
        assert "[worker]" in machine.output() and " ready." in machine.output()
        assert "[sidecar]" in machine.output()
        machine.stop(grace=30)
        assert machine.returncode == 0
        with (
            pytest.raises(InferenceUnavailable),
            InferenceClient(f"http://127.0.0.1:{port}") as gone,
        ):
            gone.health()
        assert not [
            p for p in psutil.process_iter(["cmdline"]) if "jobs@%h" in (p.info["cmdline"] or [])
        ]
    finally:
        machine.kill()
