"""Embedding jobs end to end: the real managed server with pgvector and azure_local_ai, the
real sidecar (the tiny model as ``tiny:v1``), and real Celery worker processes on a queue of
their own, sharing the console's test database."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from io import StringIO

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from psycopg import sql

from console.jobs import batches, objects, runner, service
from console.jobs.models import EmbeddingJob, JobRunner
from serverparams.server import ManagedServer
from tests.console.jobstack import CLS_URI, Jobs
from tests.console.stack import (
    drop_database,
    scratch_database,
)
from tests.fixtures.pg import allow_extensions
from tests.fixtures.sidecar import TINY_URI, SidecarProcess


def test_backfill_embeds_every_row_once_with_the_vectors_of_create_embeddings(
    jobs: Jobs,
) -> None:
    jobs.table("docs", 300)
    jobs.worker()
    job = jobs.create(batch_size=32)
    assert job.backfill_rows == 300 and job.dimensions == 32
    progress = jobs.wait_synced(job)
    assert progress == service.Progress(total=300, done=300, pending=0, failed=0)
    assert set(jobs.stamps(job).values()) == {1}
    assert len(jobs.stamps(job)) == 300
    assert jobs.mismatches(job) == 0
    column = jobs.sql(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = 'docs'::regclass AND attname = 'embedding'"
    )
    assert column == [("vector(32)",)]
    job.refresh_from_db()
    assert job.embedded_rows == 300
    # All 300 within the last minute, over at least one second.
    assert 0 < progress.rows_per_s <= 300 and progress.eta_s == 0


def test_writes_follow_insert_update_delete_and_truncate(jobs: Jobs) -> None:
    jobs.table("docs", 20)
    jobs.worker()
    job = jobs.create()
    jobs.wait_synced(job)

    jobs.sql("INSERT INTO docs (id, title, body) VALUES (21, 'new', 'a new row')")
    jobs.wait("the insert embedded", lambda: jobs.stamps(job).get(21) == 1)

    jobs.sql("UPDATE docs SET body = 'changed text' WHERE id = 5")
    jobs.wait("the update re-embedded", lambda: jobs.stamps(job).get(5) == 2)
    assert jobs.mismatches(job) == 0

    # Another column, and an embedded column set to the value it had: nothing is queued.
    jobs.sql("UPDATE docs SET views = views + 1 WHERE id = 6")
    jobs.sql("UPDATE docs SET title = title WHERE id = 7")
    assert service.progress(job).pending == 0
    jobs.sql("INSERT INTO docs (id, title, body) VALUES (22, 'marker', 'after the others')")
    jobs.wait("the marker embedded", lambda: jobs.stamps(job).get(22) == 1)
    assert jobs.stamps(job)[6] == jobs.stamps(job)[7] == 1

    jobs.sql("DELETE FROM docs WHERE id = 3")
    assert 3 not in jobs.stamps(job)
    assert service.progress(job) == service.Progress(total=21, done=21, pending=0, failed=0)

    jobs.sql("TRUNCATE docs")
    assert jobs.stamps(job) == {}
    assert service.progress(job) == service.Progress(total=0, done=0, pending=0, failed=0)
    jobs.sql("INSERT INTO docs (id, title, body) VALUES (1, 'again', 'after truncate')")
    jobs.wait("a row after truncate embedded", lambda: jobs.stamps(job) == {1: 1})
    assert jobs.mismatches(job) == 0

    jobs.sql("DROP TABLE docs")

    def says_gone() -> bool:
        job.refresh_from_db()
        return "does not exist" in job.last_error and "delete the job" in job.last_error

    jobs.wait("the job saying its table is gone", says_gone, timeout=20)


def test_a_refused_row_is_retried_then_failed_and_retry_failed_queues_it_again(
    jobs: Jobs,
) -> None:
    jobs.table("docs", 30, body=lambda i: "" if i in (7, 8) else f"body {i}")
    jobs.worker()
    # One column, no format: an empty body is an empty text, which the model refuses.
    job = jobs.create(columns=["body"], text_format="", max_attempts=2, retry_backoff_s=0.2)
    progress = jobs.wait_synced(job)
    assert progress == service.Progress(total=30, done=28, pending=0, failed=2)
    reasons = {key: (reason, attempts) for key, reason, attempts in service.failures(job)}
    assert set(reasons) == {7, 8}
    assert "22023" in reasons[7][0] and reasons[7][1] == 2
    out = StringIO()
    call_command("embedjob", "status", str(job.pk), stdout=out)
    assert "28/30 rows done (93%), 0 pending, 2 failed" in out.getvalue()
    assert "failed 7 after 2 attempt(s):" in out.getvalue()
    out = StringIO()
    call_command("embedjob", "list", stdout=out)
    assert f"#{job.pk} active " in out.getvalue() and "28/30 done" in out.getvalue()

    # Fixed by a write the triggers see: queued and embedded, and off the failed list.
    jobs.sql("UPDATE docs SET body = 'fixed by an update' WHERE id = 7")
    jobs.wait("the fixed row embedded", lambda: service.progress(job).failed == 1)
    # Fixed behind the triggers' back (a replica session): retry-failed queues it again.
    with jobs.connect() as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE docs SET body = 'fixed quietly' WHERE id = 8")
    call_command("embedjob", "retry-failed", str(job.pk))
    progress = jobs.wait_synced(job)
    assert progress == service.Progress(total=30, done=30, pending=0, failed=0)
    assert jobs.mismatches(job, "docs") == 0


def test_pause_stops_batches_and_resume_catches_up(jobs: Jobs) -> None:
    jobs.table("docs", 10)
    jobs.worker()
    job = jobs.create()
    jobs.wait_synced(job)
    call_command("embedjob", "pause", str(job.pk))
    time.sleep(1.5)  # the running batch loop sees the pause
    jobs.sql(
        "INSERT INTO docs (id, title, body) SELECT i, 't', 'paused ' || i"
        " FROM generate_series(11, 15) i"
    )
    time.sleep(2)
    assert service.progress(job) == service.Progress(total=15, done=10, pending=5, failed=0)
    out = StringIO()
    call_command("embedjob", "status", str(job.pk), stdout=out)
    assert "(paused)" in out.getvalue() and "10/15 rows done (66%), 5 pending" in out.getvalue()
    assert "rows/s over the last minute, ETA " in out.getvalue()
    call_command("embedjob", "resume", str(job.pk))
    assert jobs.wait_synced(job) == service.Progress(total=15, done=15, pending=0, failed=0)
    assert set(jobs.stamps(job).values()) == {1}
    # Deleted while its runner polls: the runner ends, the job's objects go, no traceback.
    call_command("embedjob", "delete", str(job.pk))
    time.sleep(1.5)
    jobs.sql("INSERT INTO docs (id, title, body) VALUES (16, 't', 'after delete')")
    assert jobs.sql("SELECT to_regclass(%s)", [f"embedding_jobs.job_{job.pk}_queue"]) == [(None,)]
    assert "Traceback" not in jobs.workers[0].log()


def test_a_worker_killed_mid_backfill_loses_nothing_and_embeds_nothing_twice(
    jobs: Jobs,
) -> None:
    jobs.table("docs", 3000)
    worker = jobs.worker()
    job = jobs.create(batch_size=16)
    with jobs.connect() as holder:
        # An uncommitted stamp for row 1500 makes the batch that embedded and wrote it wait
        # on its own stamp: the SIGKILL lands inside that batch's transaction, half-way.
        holder.execute("BEGIN")
        holder.execute(
            sql.SQL("INSERT INTO {} (key, model, embedded_at) VALUES (1500, 'held', now())").format(
                objects.Names(job.pk).stamps
            )
        )

        def batch_waiting() -> bool:
            # Not on the holder: a transaction sees one snapshot of pg_stat_activity.
            waiting = jobs.sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND state = 'active'"
            )
            return waiting[0][0] > 0

        jobs.wait("a batch waiting mid-transaction", batch_waiting)
        killed_at = service.progress(job)
        worker.kill()
        holder.execute("ROLLBACK")
    assert 1500 - 16 <= killed_at.done < 1500 and killed_at.pending > 1500
    worker.restart()
    progress = jobs.wait_synced(job, timeout=120)
    assert progress == service.Progress(total=3000, done=3000, pending=0, failed=0)
    counts = jobs.stamps(job)
    assert len(counts) == 3000 and set(counts.values()) == {1}
    assert jobs.mismatches(job) == 0


def test_two_workers_share_a_job_and_embed_no_row_twice(jobs: Jobs) -> None:
    jobs.table("docs", 400)
    jobs.worker()
    jobs.worker()
    job = jobs.create(batch_size=4, workers=2)
    progress = jobs.wait_synced(job, timeout=120)
    assert progress == service.Progress(total=400, done=400, pending=0, failed=0)
    stamps = jobs.stamps(job)
    assert len(stamps) == 400 and set(stamps.values()) == {1}
    runners = JobRunner.objects.filter(job=job)
    assert {r.slot for r in runners if r.batches > 0} == {0, 1}
    assert len({r.worker for r in runners}) == 2
    assert jobs.mismatches(job) == 0


def test_embedjob_says_what_is_wrong(jobs: Jobs, managed_pg: ManagedServer) -> None:
    jobs.table("docs", 3)

    def create(*extra: str) -> None:
        args = {"--database": jobs.database, "--table": "docs", "--key": "id",
                "--columns": "body", "--model": TINY_URI, "--column": "embedding"}  # fmt: skip
        for name, value in zip(extra[::2], extra[1::2], strict=True):
            args[name] = value
        call_command("embedjob", "create", *[part for pair in args.items() for part in pair])

    with pytest.raises(CommandError, match=r"there is no table public\.nope"):
        create("--table", "nope")
    with pytest.raises(CommandError, match="has no column content"):
        create("--columns", "content")
    with pytest.raises(CommandError, match="views is not the primary key or a unique column"):
        create("--key", "views")
    with pytest.raises(CommandError, match="tiny-model:v1 is not deployed"):
        create("--model", "tiny-model:v1")
    with pytest.raises(CommandError, match="the format must name only the text columns"):
        create("--format", "{title}: {body}")
    with managed_pg.connect() as conn:
        allow_extensions(conn)
    scratch_database(managed_pg, f"{jobs.database}_bare")
    try:
        with pytest.raises(CommandError, match="does not allow the extension vector"):
            create("--database", f"{jobs.database}_bare")
    finally:
        drop_database(managed_pg, f"{jobs.database}_bare")
    with managed_pg.connect() as conn:
        allow_extensions(conn, "vector", "azure_local_ai")

    create("--columns", "title,body", "--format", "{title}: {body}", "--input-type", "query")
    job = EmbeddingJob.objects.get()
    assert job.text_prefix == "query: " and job.backfill_rows == 3
    with pytest.raises(CommandError, match=rf"job #{job.pk} already fills public\.docs\.embedding"):
        create()
    call_command("embedjob", "delete", str(job.pk), "--drop-column")
    job.refresh_from_db()
    assert job.state == "deleted"
    assert jobs.sql("SELECT tgname FROM pg_trigger WHERE tgrelid = 'docs'::regclass") == []
    assert jobs.sql("SELECT to_regclass(%s)", [f"embedding_jobs.job_{job.pk}_queue"]) == [(None,)]
    columns = jobs.sql("SELECT attname FROM pg_attribute WHERE attrelid = 'docs'::regclass")
    assert ("embedding",) not in columns


def test_an_unavailable_model_makes_the_job_wait_without_failing_rows(
    jobs: Jobs, sidecar: SidecarProcess
) -> None:
    jobs.table("docs", 10)
    jobs.worker()
    job = jobs.create(max_attempts=1)
    jobs.wait_synced(job)
    sidecar.client.unload(TINY_URI)
    try:
        jobs.sql("INSERT INTO docs (id, title, body) VALUES (11, 'later', 'while unloaded')")

        def waiting() -> bool:
            job.refresh_from_db()
            return "55000" in job.last_error

        jobs.wait("the job saying why it waits", waiting)
        assert service.progress(job) == service.Progress(total=11, done=10, pending=1, failed=0)
    finally:
        sidecar.client.load(TINY_URI)
    progress = jobs.wait_synced(job)
    assert progress == service.Progress(total=11, done=11, pending=0, failed=0)
    job.refresh_from_db()
    assert job.last_error == ""


def test_writes_during_the_backfill_end_with_every_vector_matching_its_final_text(
    jobs: Jobs,
) -> None:
    jobs.table("docs", 300)
    jobs.worker()
    jobs.worker()
    job = jobs.create(batch_size=8, workers=2)
    with jobs.connect() as holder, jobs.connect() as conn:
        # A row held by another session (no round writes it) stays queued, not waited on:
        # the writes below certainly overlap the backfill.
        holder.execute("BEGIN")
        holder.execute("SELECT 1 FROM docs WHERE id = 259 FOR UPDATE")
        for round_no in range(40):
            # Several rows per transaction, in descending key order against the workers'
            # ascending batches: neither side may wait on the other into a deadlock.
            with conn.transaction():
                for key in range(290 - round_no * 7, 250 - round_no * 7, -9):
                    conn.execute(
                        "UPDATE docs SET body = %s WHERE id = %s", [f"round {round_no}", key]
                    )
                conn.execute("DELETE FROM docs WHERE id = %s", [300 - round_no])
                conn.execute(
                    "INSERT INTO docs (id, title, body) VALUES (%s, 'late', 'inserted late')",
                    [1000 + round_no],
                )
        time.sleep(0.5)
        assert service.progress(job).pending > 0
        holder.execute("ROLLBACK")
    progress = jobs.wait_synced(job, timeout=120)
    assert progress == service.Progress(total=300, done=300, pending=0, failed=0)
    assert jobs.mismatches(job) == 0
    keys = {row[0] for row in jobs.sql("SELECT id FROM docs")}
    assert set(jobs.stamps(job)) == keys


def test_an_idle_job_leaves_its_worker_to_other_jobs(jobs: Jobs) -> None:
    jobs.table("docs", 10)
    jobs.table("notes", 10)
    jobs.worker()
    first = jobs.create()
    jobs.wait_synced(first)
    time.sleep(4)  # the first job's runner goes idle and hands over with a countdown
    second = jobs.create(table="notes")
    # Well within the RUN_S a busy runner keeps its worker.
    assert jobs.wait_synced(second, timeout=8).done == 10
    jobs.sql("INSERT INTO docs (id, title, body) VALUES (11, 'later', 'while idle')")
    jobs.wait("the idle job's new row embedded", lambda: jobs.stamps(first).get(11) == 1, 8)


def test_a_slot_whose_successor_was_lost_is_nudged_by_a_live_runner(jobs: Jobs) -> None:
    jobs.table("docs", 10)
    worker = jobs.worker()
    job = jobs.create(workers=2)
    jobs.wait_synced(job)
    jobs.wait(
        "both slots running",
        lambda: JobRunner.objects.filter(job=job).exclude(worker="").count() == 2,
        timeout=30,
    )

    # As if slot 1's successor had been lost with a worker: the task that comes finds itself
    # no longer expected and ends, and only a nudge can start the slot again.
    def lost() -> bool:
        if "'superseded'" in worker.log():
            return True
        JobRunner.objects.filter(job=job, slot=1).exclude(next_task="lost").update(
            next_task="lost", handed_over_at=timezone.now() - timedelta(minutes=5)
        )
        return False

    jobs.wait("slot 1's chain ending", lost, timeout=30)
    jobs.wait(
        "slot 1 taken up again",
        lambda: JobRunner.objects.get(job=job, slot=1).next_task != "lost",
        timeout=30,
    )


def test_quoted_names_a_text_key_and_an_input_type(jobs: Jobs) -> None:
    jobs.sql('CREATE SCHEMA "Odd Schema"')
    jobs.sql('CREATE TABLE "Odd Schema"."Docs; Table" ("Key" text PRIMARY KEY, "Body Text" text)')
    jobs.sql(
        """INSERT INTO "Odd Schema"."Docs; Table" SELECT 'k' || i, 'text ' || i"""
        " FROM generate_series(1, 20) i"
    )
    jobs.worker()
    job = jobs.create(
        table='Odd Schema.Docs; Table', key="Key", columns=["Body Text"], text_format="",
        input_type="passage", column="Vec'tor",
    )  # fmt: skip
    assert jobs.wait_synced(job) == service.Progress(total=20, done=20, pending=0, failed=0)
    far = jobs.sql(
        """SELECT count(*) FROM "Odd Schema"."Docs; Table" WHERE ("Vec'tor" <=>"""
        """ azure_local_ai.create_embeddings(%s, 'passage: ' || "Body Text")::vector) > 1e-5""",
        [TINY_URI],
    )
    assert far == [(0,)]
    assert set(jobs.stamps(job)) == {f"k{i}" for i in range(1, 21)}


# -- chunking, model changes, the index -----------------------------------------------------

LONG = "the cat is on the house and a red car drives to the vector search in postgres"


def chunk_rows(jobs: Jobs, table: str = "docs_chunks") -> dict[int, list[str]]:
    rows = jobs.sql(
        sql.SQL("SELECT key, chunk FROM {} ORDER BY key, chunk_no")
        .format(sql.Identifier(table))
        .as_string()
    )
    out: dict[int, list[str]] = {}
    for key, chunk in rows:
        out.setdefault(key, []).append(chunk)
    return out


def test_chunking_splits_long_texts_by_tokens_and_follows_writes(
    jobs: Jobs, sidecar: SidecarProcess
) -> None:
    # Rows 1-10 are long (several chunks at 10 tokens), 11-20 short; 21 has no text at all.
    jobs.table("docs", 20, body=lambda i: " ".join([LONG] * (i % 3 + 1)) if i <= 10 else "short")
    jobs.sql("INSERT INTO docs (id) VALUES (21)")
    jobs.worker()
    job = jobs.create(
        columns=["body"], text_format="", chunk_tokens=10, chunk_overlap=3, input_type="passage"
    )
    assert job.chunk_table == "docs_chunks" and job.destination == "public.docs_chunks.embedding"
    progress = jobs.wait_synced(job)
    assert (progress.total, progress.done, progress.chunked) == (21, 21, 10)
    rows = chunk_rows(jobs)
    bodies = dict(jobs.sql("SELECT id, body FROM docs WHERE body IS NOT NULL"))
    assert set(rows) == set(bodies) and progress.chunks == sum(map(len, rows.values()))
    # The sidecar's split of each text, and nothing past the model's limit was cut.
    expected = sidecar.client.chunks(TINY_URI, [bodies[k] for k in sorted(bodies)], 10, 3,
                                     "passage")  # fmt: skip
    assert [rows[k] for k in sorted(bodies)] == expected
    pieces = [chunk for parts in expected for chunk in parts]
    details = sidecar.client.embed_detailed(TINY_URI, pieces, "passage", truncate=False)
    assert max(details.prompt_tokens) <= 10 + 2 + 2  # [CLS] [SEP] and "passage: "
    assert not any(details.truncated)
    # Each chunk's vector is create_embeddings of the chunk with the input type's prefix.
    far = jobs.sql(
        "SELECT count(*) FROM docs_chunks WHERE embedding IS NULL OR (embedding <=>"
        " azure_local_ai.create_embeddings(%s, 'passage: ' || chunk)::vector) > 1e-5",
        [TINY_URI],
    )
    assert far == [(0,)]

    jobs.sql("UPDATE docs SET body = 'now short' WHERE id = 1")
    jobs.sql("DELETE FROM docs WHERE id = 2")
    jobs.sql("INSERT INTO docs (id, body) VALUES (30, %s)", [" ".join([LONG] * 2)])
    jobs.wait("the writes followed", lambda: chunk_rows(jobs).get(1) == ["now short"]
              and 30 in chunk_rows(jobs))  # fmt: skip
    jobs.wait_synced(job)
    assert 2 not in chunk_rows(jobs) and len(chunk_rows(jobs)[30]) > 1
    jobs.sql("TRUNCATE docs")
    assert chunk_rows(jobs) == {}

    service.delete(job, drop_column=True)
    assert jobs.sql("SELECT to_regclass('docs_chunks')") == [(None,)]


def test_chunk_sizes_the_model_cannot_take_are_refused_before_anything_is_created(
    jobs: Jobs,
) -> None:
    jobs.table("docs", 3)
    with pytest.raises(service.JobError, match="at most 30 tokens remain"):
        jobs.create(columns=["body"], text_format="", chunk_tokens=31)
    with pytest.raises(service.JobError, match="less than the chunk size") as overlap:
        jobs.create(columns=["body"], text_format="", chunk_tokens=8, chunk_overlap=8)
    assert overlap.value.field == "chunk_overlap"
    with pytest.raises(service.JobError, match=CLS_URI) as undeployed:
        jobs.create(columns=["body"], text_format="", chunk_tokens=8, model_uri=CLS_URI)
    assert undeployed.value.field == "model_uri"
    jobs.sql("CREATE TABLE docs_chunks (x int)")
    with pytest.raises(service.JobError, match="exists already"):
        jobs.create(columns=["body"], text_format="", chunk_tokens=8)
    assert not EmbeddingJob.objects.exists()
    assert jobs.sql("SELECT to_regnamespace('embedding_jobs')") == [(None,)]


def vectors_far_from(jobs: Jobs, model: str, column: str = "embedding") -> int:
    """Rows whose ``column`` is not ``model``'s embedding of their text."""
    return jobs.sql(
        sql.SQL(
            "SELECT count(*) FROM docs WHERE {c} IS NULL OR ({c} <=>"
            " azure_local_ai.create_embeddings(%s, title || ': ' || body)::vector) > 1e-5"
        )
        .format(c=sql.Identifier(column))
        .as_string(),
        [model],
    )[0][0]


def test_a_model_change_embeds_again_while_the_old_vectors_stay_queryable(
    jobs: Jobs, cls_model: str
) -> None:
    jobs.table("docs", 60)
    jobs.worker()
    job = jobs.create(batch_size=8)
    jobs.wait_synced(job)
    assert vectors_far_from(jobs, cls_model) == 60  # the two models differ
    with pytest.raises(service.JobError, match="already"):
        service.change_model(job, TINY_URI)

    service.pause(job)  # so the change cannot end before the holder below is in place
    assert service.change_model(job, cls_model) == 60
    job.refresh_from_db()
    assert job.next_model_uri == cls_model and job.backfill_done_at is None
    with pytest.raises(service.JobError, match="already being embedded again"):
        service.change_model(job, TINY_URI)
    jobs.sql("INSERT INTO docs (id, title, body) VALUES (61, 'new', 'written meanwhile')")
    with jobs.connect() as holder:
        # A session holding the table as a writer does: batches go on, the swap waits.
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE docs IN ROW EXCLUSIVE MODE")
        service.resume(job)

        def reembedded() -> bool:
            p = service.progress(job)
            return p.reembedding == cls_model and p.pending == 0 and p.done == p.total == 61

        jobs.wait("every row embedded again", reembedded)
        # Until the swap, queries see the old model's vectors, the new row's included.
        assert vectors_far_from(jobs, TINY_URI) == 0
        assert vectors_far_from(jobs, cls_model, "embedding__next") == 0
        holder.execute("ROLLBACK")

    def swapped() -> bool:
        job.refresh_from_db()
        return job.model_uri == cls_model and not job.next_model_uri

    jobs.wait("the new vectors in place", swapped, timeout=30)
    assert vectors_far_from(jobs, cls_model) == 0
    columns = jobs.sql(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'docs'::regclass AND attnum > 0"
        " AND NOT attisdropped ORDER BY attnum"
    )
    assert [c for (c,) in columns] == ["id", "title", "body", "views", "embedding"]
    stamps = jobs.sql(
        sql.SQL("SELECT DISTINCT model, precision, next_model FROM {}")
        .format(objects.Names(job.pk).stamps)
        .as_string()
    )
    assert stamps == [(cls_model, "fp32", None)]
    # The row written during the change was embedded by both models, the others twice in all.
    assert set(jobs.stamps(job).values()) == {2}
    assert job.backfill_done_at is not None
    assert service.progress(job) == service.Progress(total=61, done=61, pending=0, failed=0)
    jobs.sql("UPDATE docs SET body = 'after the change' WHERE id = 1")
    jobs.wait("writes follow with the new model", lambda: jobs.stamps(job)[1] == 3)
    assert vectors_far_from(jobs, cls_model) == 0


def _drain(conn: psycopg.Connection, job: EmbeddingJob) -> None:
    """Run the job's batches here, without a worker, until its queue is empty."""
    while batches.run_batch(conn, job).taken:
        pass


def _queued(jobs: Jobs, job: EmbeddingJob) -> int:
    n = objects.Names(job.pk)
    return jobs.sql(sql.SQL("SELECT count(*) FROM {}").format(n.queue).as_string())[0][0]


def test_a_batch_with_a_record_read_before_a_model_change_started_or_ended_takes_nothing(
    jobs: Jobs, cls_model: str
) -> None:
    # The console commits a change on the server before it records it, and a runner reads the
    # record before each batch: in between, the batch must not embed with the wrong model.
    jobs.table("docs", 20)
    job = jobs.create(batch_size=8)  # no worker: the batches run here, one at a time
    with service.connect(job.database, autocommit=False) as conn:
        _drain(conn, job)
        before = EmbeddingJob.objects.get(pk=job.pk)
        service.change_model(job, cls_model)
        with pytest.raises(batches.StaleJob):
            batches.run_batch(conn, before)
        assert _queued(jobs, job) == 20  # nothing taken, nothing stamped with the old model
        job.refresh_from_db()
        _drain(conn, job)
        changing = EmbeddingJob.objects.get(pk=job.pk)
        assert runner._caught_up(conn, changing, slot=0)  # the swap
        jobs.sql("UPDATE docs SET body = 'after the swap' WHERE id = 1")
        with pytest.raises(batches.StaleJob):  # the shadow it names is gone
            batches.run_batch(conn, changing)
        assert _queued(jobs, job) == 1
        job.refresh_from_db()
        assert job.model_uri == cls_model and not job.next_model_uri
        _drain(conn, job)
    assert vectors_far_from(jobs, cls_model) == 0
    assert service.progress(job) == service.Progress(total=20, done=20, pending=0, failed=0)


def test_a_runner_records_a_swap_whose_record_was_lost_and_waits_for_an_unrecorded_start(
    jobs: Jobs, cls_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs.table("docs", 10)
    job = jobs.create()
    monkeypatch.setattr(runner, "RUN_S", 30.0)  # ends sooner: idle after IDLE_S
    monkeypatch.setattr(runner, "IDLE_S", 0.5)
    assert runner.run(job.pk, 0, "test", nudge=True) == "idle"
    assert service.progress(job).done == 10
    # The server's side of a change, as if the console had stopped before recording it.
    with service.connect(job.database, autocommit=False) as conn:
        objects.start_model_change(conn, job, dimensions=job.dimensions)
    monkeypatch.setattr(runner, "UNRECORDED_CHANGE_S", 0.5)
    monkeypatch.setattr(runner, "RUN_S", 1.5)  # waits for the record until the run ends
    assert runner.run(job.pk, 0, "test", nudge=True) == "active"
    job.refresh_from_db()
    assert "no record of it" in job.last_error and "change the model again" in job.last_error
    assert _queued(jobs, job) == 10  # waiting, not embedded with the old model

    # Changing the model again starts afresh; the swap then commits, and its record is lost.
    service.pause(job)
    service.change_model(job, cls_model)
    job.refresh_from_db()
    with service.connect(job.database, autocommit=False) as conn:
        _drain(conn, job)
        assert objects.finish_model_change(conn, job)
    jobs.sql("UPDATE docs SET body = 'after the swap' WHERE id = 1")
    service.resume(job)
    monkeypatch.setattr(runner, "RUN_S", 30.0)
    assert runner.run(job.pk, 0, "test", nudge=True) == "idle"
    job.refresh_from_db()
    assert job.model_uri == cls_model and not job.next_model_uri and job.last_error == ""
    assert vectors_far_from(jobs, cls_model) == 0
    assert service.progress(job) == service.Progress(total=10, done=10, pending=0, failed=0)


def test_a_model_change_of_a_chunking_job_swaps_its_chunk_table(jobs: Jobs, cls_model: str) -> None:
    jobs.table("docs", 12, body=lambda i: " ".join([LONG] * 2))
    jobs.worker()
    job = jobs.create(chunk_tokens=12, chunk_overlap=2)
    jobs.wait_synced(job)
    before = chunk_rows(jobs)
    service.change_model(job, cls_model)

    def swapped() -> bool:
        job.refresh_from_db()
        return job.model_uri == cls_model

    jobs.wait("the new chunk table in place", swapped)
    assert chunk_rows(jobs) == before  # the same tokenizer: the same chunks
    far = jobs.sql(
        "SELECT count(*) FROM docs_chunks WHERE (embedding <=>"
        " azure_local_ai.create_embeddings(%s, chunk)::vector) > 1e-5",
        [cls_model],
    )
    assert far == [(0,)]
    assert jobs.sql("SELECT to_regclass('docs_chunks__next')") == [(None,)]
    jobs.sql("DELETE FROM docs WHERE id = 1")
    assert 1 not in chunk_rows(jobs)


def test_the_hnsw_index_is_built_once_the_backfill_is_done(jobs: Jobs) -> None:
    jobs.table("docs", 50)
    jobs.worker()
    job = jobs.create(build_index=True)

    def built() -> bool:
        job.refresh_from_db()
        return job.index_built_at is not None

    jobs.wait("the index built", built)
    assert job.backfill_done_at is not None and job.backfill_done_at <= job.index_built_at
    index = jobs.sql(
        "SELECT i.indisvalid, am.amname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " JOIN pg_am am ON am.oid = c.relam WHERE c.relname = %s",
        [f"embedding_job_{job.pk}_hnsw"],
    )
    assert index == [(True, "hnsw")]
    with jobs.connect() as conn:
        conn.execute("SET enable_seqscan = off")
        query = jobs.sql("SELECT embedding::text FROM docs WHERE id = 1")[0][0]
        plan = conn.execute(
            "EXPLAIN SELECT id FROM docs ORDER BY embedding <=> %s::vector LIMIT 5", [query]
        ).fetchall()
    assert any(f"embedding_job_{job.pk}_hnsw" in line for (line,) in plan), plan


def test_embedjob_chunks_and_changes_models(jobs: Jobs, cls_model: str) -> None:
    jobs.table("docs", 5, body=lambda i: " ".join([LONG] * 2))
    jobs.worker()
    out = StringIO()
    call_command(
        "embedjob", "create", "--database", jobs.database, "--table", "docs", "--key", "id",
        "--columns", "body", "--model", TINY_URI, "--column", "vec", "--chunk-tokens", "16",
        "--chunk-overlap", "4", "--chunk-table", "pieces", "--build-index", stdout=out,
    )  # fmt: skip
    assert "public.pieces.vec vector(32)" in out.getvalue()
    job = EmbeddingJob.objects.get()
    jobs.wait_synced(job)
    call_command("embedjob", "change-model", str(job.pk), cls_model, stdout=out)
    assert "5 row(s) queued to embed again" in out.getvalue()
    with pytest.raises(CommandError, match="already being embedded again"):
        call_command("embedjob", "change-model", str(job.pk), TINY_URI)
    call_command("embedjob", "status", str(job.pk), stdout=out)
    assert "chunk(s); 5 row(s) split in several" in out.getvalue()
    with pytest.raises(CommandError, match="at most 30 tokens remain"):
        call_command(
            "embedjob", "create", "--database", jobs.database, "--table", "docs", "--key", "id",
            "--columns", "title", "--model", TINY_URI, "--column", "v2", "--chunk-tokens", "40",
        )  # fmt: skip


def test_a_timestamp_key_in_a_database_with_another_date_style(jobs: Jobs) -> None:
    jobs.sql(f"ALTER DATABASE \"{jobs.database}\" SET DateStyle = 'German, DMY'")
    jobs.sql("CREATE TABLE events (at timestamptz PRIMARY KEY, note text)")
    jobs.sql(
        "INSERT INTO events SELECT timestamptz '2026-01-01' + i * interval '1 hour',"
        " CASE WHEN i = 3 THEN '' ELSE 'note ' || i END FROM generate_series(1, 12) i"
    )
    jobs.worker()
    job = jobs.create(table="events", key="at", columns=["note"], text_format="", max_attempts=1)
    progress = jobs.wait_synced(job)
    assert (progress.done, progress.failed) == (11, 1)
    [(key, reason, attempts)] = service.failures(job)
    assert key.hour == 3 and attempts == 1 and "SQLSTATE 22" in reason


def test_batches_write_as_the_tables_owner_so_its_triggers_never_run_as_superuser(
    jobs: Jobs,
) -> None:
    role = f"owner_{jobs.database}"
    as_owner = f'SET ROLE "{role}"; '
    jobs.sql(f'CREATE ROLE "{role}" NOLOGIN')
    try:
        jobs.sql(f'GRANT CREATE ON SCHEMA public TO "{role}"')
        jobs.sql(
            as_owner + "CREATE TABLE docs (id bigint PRIMARY KEY, body text);"
            " CREATE TABLE audit (who text, super boolean);"
            " CREATE FUNCTION note() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            "   INSERT INTO audit SELECT current_user, rolsuper FROM pg_roles"
            "    WHERE rolname = current_user; RETURN NEW; END $$;"
            " CREATE TRIGGER note BEFORE UPDATE ON docs FOR EACH ROW EXECUTE FUNCTION note();"
            " INSERT INTO docs SELECT i, 'text ' || i FROM generate_series(1, 20) i"
        )
        jobs.worker()
        job = jobs.create(columns=["body"], text_format="")
        chunks = jobs.create(columns=["body"], text_format="", chunk_tokens=8)
        jobs.wait_synced(job)
        jobs.wait_synced(chunks)
        jobs.sql(as_owner + "UPDATE docs SET body = 'changed' WHERE id = 1")
        jobs.wait("the change embedded", lambda: jobs.stamps(job).get(1) == 2)
        # The job adds its column as the console, but every batch writes as the owner.
        assert set(jobs.sql("SELECT who, super FROM audit")) == {(role, False)}
        assert len(jobs.sql("SELECT 1 FROM audit")) == 20 + 1 + 1
        jobs.wait_synced(chunks)
        assert chunk_rows(jobs)[1] == ["changed"]
        service.delete(job, drop_column=True)
        service.delete(chunks, drop_column=True)
    finally:
        jobs.sql(f'DROP OWNED BY "{role}" CASCADE; DROP ROLE "{role}"')


def _leftovers(jobs: Jobs) -> list[tuple]:
    """What any job made in the user's database: triggers on docs, and relations and
    functions in the jobs' schema."""
    return jobs.sql(
        "SELECT 'trigger', tgname::text FROM pg_trigger WHERE tgrelid = 'docs'::regclass"
        " AND NOT tgisinternal"
        " UNION ALL SELECT 'relation', c.relname::text FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s"
        " UNION ALL SELECT 'function', p.proname::text FROM pg_proc p"
        " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s",
        [objects.SCHEMA, objects.SCHEMA],
    )


def _has_column(jobs: Jobs, name: str = "embedding") -> bool:
    return bool(
        jobs.sql(
            "SELECT 1 FROM pg_attribute WHERE attrelid = 'docs'::regclass AND attname = %s"
            " AND NOT attisdropped",
            [name],
        )
    )


def test_a_creation_whose_ddl_fails_midway_leaves_no_row_and_nothing_in_the_database(
    jobs: Jobs,
) -> None:
    jobs.table("docs", 5)
    real = objects.write_trigger_function

    def fails_after_the_function(conn: psycopg.Connection, *args: object, **kw: object) -> None:
        real(conn, *args, **kw)  # type: ignore[arg-type]
        conn.execute("SELECT 1 / 0")  # the queue tables and the function exist by now

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(objects, "write_trigger_function", fails_after_the_function)
        with pytest.raises(service.JobError, match=r"triggers and queue on public\.docs failed"):
            jobs.create()
    assert not EmbeddingJob.objects.exists()
    assert _leftovers(jobs) == [] and not _has_column(jobs)

    def raises(*args: object, **kwargs: object) -> None:
        raise RuntimeError("stopped midway")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(objects, "write_trigger_function", raises)
        with pytest.raises(RuntimeError, match="stopped midway"):
            jobs.create(columns=["body"], text_format="", chunk_tokens=8)
    assert not EmbeddingJob.objects.exists()
    assert _leftovers(jobs) == [] and jobs.sql("SELECT to_regclass('docs_chunks')") == [(None,)]

    job = jobs.create()  # the happy path, as before
    assert job.state == EmbeddingJob.State.ACTIVE and job.backfill_rows == 5
    assert EmbeddingJob.objects.get().state == EmbeddingJob.State.ACTIVE
    assert len([row for row in _leftovers(jobs) if row[0] == "trigger"]) == 6  # 3 queue, 3 count


def test_a_creation_that_fails_after_its_ddl_drops_it_again(
    jobs: Jobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import DatabaseError
    from django.db.models import QuerySet

    jobs.table("docs", 5)
    real_update = QuerySet.update

    def activation_fails(self: QuerySet, **kwargs: object) -> int:
        if kwargs.get("state") == EmbeddingJob.State.ACTIVE:
            raise DatabaseError("the console's database went away")
        return real_update(self, **kwargs)

    monkeypatch.setattr(QuerySet, "update", activation_fails)
    with pytest.raises(DatabaseError, match="went away"):
        jobs.create()
    assert not EmbeddingJob.objects.exists()
    assert _leftovers(jobs) == [] and not _has_column(jobs)  # the creation added it

    # A destination column that was there before stays; a chunk table the creation made goes.
    jobs.sql("ALTER TABLE docs ADD COLUMN embedding vector(32)")
    with pytest.raises(DatabaseError, match="went away"):
        jobs.create()
    with pytest.raises(DatabaseError, match="went away"):
        jobs.create(columns=["body"], text_format="", chunk_tokens=8)
    assert not EmbeddingJob.objects.exists()
    assert _leftovers(jobs) == [] and _has_column(jobs)
    assert jobs.sql("SELECT to_regclass('docs_chunks')") == [(None,)]


def test_an_interrupted_creation_is_ignored_by_runners_then_undone_once_stale(
    jobs: Jobs,
) -> None:
    from django.db import DatabaseError
    from django.db.models import QuerySet

    from console.jobs import views

    jobs.table("docs", 5)
    real_update = QuerySet.update

    def activation_fails(self: QuerySet, **kwargs: object) -> int:
        if kwargs.get("state") == EmbeddingJob.State.ACTIVE:
            raise DatabaseError("the console's database went away")
        return real_update(self, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(QuerySet, "update", activation_fails)
        # The process stops (SIGKILL) before it can undo anything.
        patch.setattr(service, "_undo", lambda *args, **kwargs: None)
        with pytest.raises(DatabaseError):
            jobs.create()
    job = EmbeddingJob.objects.get()
    assert job.state == EmbeddingJob.State.CREATING
    assert len([row for row in _leftovers(jobs) if row[0] == "trigger"]) == 6  # 3 queue, 3 count
    assert runner.run(job.pk, 0, "task", nudge=True) == "inactive"
    assert views.Watch(job, None).status == ("Creating", "warn")
    with pytest.raises(service.JobError, match="is being created"):
        service.delete(job)
    assert service.clean_up_interrupted() == []  # not stale yet: it may still be running

    EmbeddingJob.objects.filter(pk=job.pk).update(
        created_at=timezone.now() - service.INTERRUPTED_AFTER - timedelta(seconds=1)
    )
    job.refresh_from_db()
    assert views.Watch(job, None).status == ("Creation interrupted", "bad")
    created = jobs.create()  # the next creation undoes it first, then takes its destination
    assert not EmbeddingJob.objects.filter(pk=job.pk).exists()
    assert created.state == EmbeddingJob.State.ACTIVE
    triggers = {row[1] for row in _leftovers(jobs) if row[0] == "trigger"}
    assert triggers == {
        f"embedding_job_{created.pk}_{what}"
        for what in ("write", "update", "truncate", *objects.COUNT_TRIGGERS)
    }


def _exact(jobs: Jobs, job: EmbeddingJob) -> service.Progress:
    """The figures counted row by row, as the job's counts stand for them: every row of the
    table, those stamped with the job's model and neither queued nor failed, the queued keys
    and the failed ones."""
    n = objects.Names(job.pk)
    row = jobs.sql(
        sql.SQL(
            "SELECT (SELECT count(*) FROM {t}),"
            " (SELECT count(*) FROM {s} WHERE model = %s"
            "   AND NOT EXISTS (SELECT 1 FROM {q} WHERE key = {s}.key)"
            "   AND NOT EXISTS (SELECT 1 FROM {f} WHERE key = {s}.key)),"
            " (SELECT count(DISTINCT key) FROM {q}), (SELECT count(*) FROM {f})"
        )
        .format(t=objects.table(job), s=n.stamps, q=n.queue, f=n.failed)
        .as_string(),
        [job.model_uri],
    )[0]
    return service.Progress(total=row[0], done=row[1], pending=row[2], failed=row[3])


def test_the_counts_stay_exact_under_concurrent_writes_batches_and_a_failed_row(
    jobs: Jobs,
) -> None:
    jobs.table("docs", 400, body=lambda i: "" if i == 7 else f"body {i}")
    jobs.worker()
    jobs.worker()
    # One column, no format: the empty body of row 7 is refused, and fails at once.
    job = jobs.create(columns=["body"], text_format="", max_attempts=1, batch_size=8, workers=2)
    assert service.progress(job).total == 400  # counted when created

    def write(writer: int) -> None:
        base = 10_000 * (writer + 1)
        with jobs.connect() as conn:
            for round_no in range(25):
                with conn.transaction():
                    # A statement of many rows, one of one, an update, a delete of several.
                    conn.execute(
                        "INSERT INTO docs (id, title, body) SELECT g, 'bulk', 'bulk ' || g"
                        " FROM generate_series(%s::bigint, %s::bigint) AS g",
                        [base + round_no * 10, base + round_no * 10 + 5],
                    )
                    conn.execute(
                        "INSERT INTO docs (id, title, body) VALUES (%s, 'one', 'one row')",
                        [base + round_no * 10 + 9],
                    )
                    conn.execute(
                        "UPDATE docs SET body = %s WHERE id = %s",
                        [f"writer {writer} round {round_no}", 20 + writer * 100 + round_no],
                    )
                    conn.execute(
                        "DELETE FROM docs WHERE id BETWEEN %s AND %s",
                        [base + round_no * 10, base + round_no * 10 + 1],
                    )
                # A transaction rolled back counts nothing.
                with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
                    conn.execute("INSERT INTO docs (id, title, body) VALUES (999, 'x', 'x')")
                    conn.execute("INSERT INTO docs (id, title, body) VALUES (1, 'x', 'x')")
            # Rows inserted, then deleted by the statement after.
            conn.execute("DELETE FROM docs WHERE id > %s AND id < %s AND title = 'one'",
                         [base, base + 50])  # fmt: skip

    with ThreadPoolExecutor(3) as pool:
        for writer in [pool.submit(write, w) for w in range(3)]:
            writer.result()  # raises what the writer raised
    progress = jobs.wait_synced(job, timeout=120)
    exact = _exact(jobs, job)
    assert progress == exact
    # 400 + 3 writers * (25 rounds * (6 + 1 - 2) rows - 5 single rows deleted at the end)
    assert exact == service.Progress(total=400 + 3 * (125 - 5), done=399 + 3 * 120,
                                     pending=0, failed=1)  # fmt: skip
    assert jobs.mismatches(job, "docs") == 1  # the failed row, which has no vector


def test_recount_corrects_a_skewed_count_and_an_older_job_gets_its_counts_on_first_use(
    jobs: Jobs,
) -> None:
    jobs.table("docs", 10)
    job = jobs.create()  # no worker: the rows stay pending
    n = objects.Names(job.pk)
    counted = service.progress(job).recounted_at
    assert counted is not None
    jobs.sql(sql.SQL("UPDATE {} SET rows = rows + 5 WHERE id = 0").format(n.counts).as_string())
    assert service.progress(job).total == 15
    assert service.recount(job) == (15, 10)
    progress = service.progress(job)
    assert progress == service.Progress(total=10, done=0, pending=10, failed=0)
    assert progress.recounted_at is not None and progress.recounted_at > counted

    # Many small statements: their deltas are folded into the count by a poll.
    with jobs.connect() as conn:
        for key in range(11, 11 + service.FOLD_AFTER + 20):
            conn.execute("INSERT INTO docs (id, title, body) VALUES (%s, 't', 'b')", [key])
    total = 10 + service.FOLD_AFTER + 20
    assert service.progress(job).total == total
    assert jobs.sql(sql.SQL("SELECT count(*) FROM {}").format(n.counts).as_string()) == [(1,)]
    jobs.sql("TRUNCATE docs")
    assert service.progress(job) == service.Progress(total=0, done=0, pending=0, failed=0)

    # A job from before the counts: its first poll counts the table once and creates them.
    jobs.sql("INSERT INTO docs (id, title, body) SELECT g, 't', 'b' FROM generate_series(1, 7) g")
    with jobs.connect() as conn:
        for what in objects.COUNT_TRIGGERS:
            conn.execute(sql.SQL("DROP TRIGGER {} ON docs").format(n.trigger(what)))
        conn.execute(sql.SQL("DROP FUNCTION {} ()").format(n.count_function))
        conn.execute(sql.SQL("DROP TABLE {}").format(n.counts))
        conn.execute("INSERT INTO docs (id, title, body) VALUES (8, 't', 'b')")
        assert not objects.has_counts(conn, job)
    assert service.progress(job) == service.Progress(total=8, done=0, pending=8, failed=0)
    jobs.sql("DELETE FROM docs WHERE id IN (1, 2)")
    assert service.progress(job).total == 6
    assert service.recount(job) == (6, 6)
    service.delete(job)
    assert jobs.sql("SELECT to_regclass(%s)", [n.counts.as_string()]) == [(None,)]
    assert jobs.sql("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'docs'::regclass") == [(0,)]
