"""The runners of a job: Celery task chains that take its batches.

A job has ``workers`` slots; each slot is one chain of ``jobs.run`` tasks. A task holds its
slot with a session advisory lock in the user's database (so a worker that dies, SIGKILL
included, frees it as soon as its connection drops, with no heartbeat to wait out), runs
batches for up to ``RUN_S`` seconds, then hands over to a successor task it sends itself, whose
id it records in the slot's ``JobRunner`` row. Several workers share a job through the queue's
``SKIP LOCKED``; slots only bound how many batches run at once.

New rows are found by polling, not LISTEN/NOTIFY. While the queue has work, or had some in the
last ``IDLE_S`` seconds, the runner looks at it every ``POLL_S`` seconds; once idle it ends and
hands over with a countdown of ``IDLE_RECHECK_S``, so an idle job does not hold a worker that
deployments and other jobs need. A poll of the queue's index is one cheap query; NOTIFY would
add a ``pg_notify`` to every write the triggers see and need a connection held open per
listener, to save at most ``IDLE_RECHECK_S`` of delay. The chains are their own schedule;
Celery beat's sweeper only nudges lost ones.

A batch a worker refuses (a job that embeds on the workers, where this worker's sidecar does
not serve the server's model) is recorded with the reason, and the slot's task goes back to
the queue after ``REFUSED_WAIT_S`` for another worker to take.

Other tasks for a slot are nudges (sent when a job is created or resumed, when a worker
starts, and by any runner or the sweeper that finds a slot whose handed-over task never
started, or whose running task was taken over ``ABANDONED_AFTER`` ago and never handed over:
both lost with a worker): a nudge waits up to ``NUDGE_WAIT_S`` for the slot's lock (long
enough for a dead worker's connection to go, and for a live runner to hand over) and, if it
gets it, becomes the slot's chain; the superseded successor then finds itself no longer
expected and ends.

When a runner finds the queue empty it finishes what waits for that: the first time, the
backfill is done (the bell says so); during a model change, the shadow replaces the
destination; and where the job asks for it, slot 0 builds the HNSW index, concurrently, so
writes go on meanwhile.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import timedelta

import psycopg
from django.db import close_old_connections
from django.db.models import F
from django.utils import timezone

from console.jobs import batches, dispatch, objects, onworker, service
from console.jobs.models import EmbeddingJob, JobRunner, WorkerRefusal
from console.jobs.service import JobError, connect

log = logging.getLogger(__name__)

RUN_S = 10.0
POLL_S = 0.1
IDLE_S = 3.0
IDLE_RECHECK_S = 2.0
NUDGE_WAIT_S = 15.0
BLOCKED_WAIT_S = 5.0  # between tries while the sidecar or the model is unavailable
REFUSED_WAIT_S = 1.0  # a batch this worker refused goes back to the queue after this
ABANDONED_AFTER = timedelta(seconds=60)  # a handover no task took up in this long
INDEX_RETRY_AFTER = timedelta(seconds=60)  # after a failed index build
SWAP_LOCK_TIMEOUT = "5s"  # a model change's swap waits this long for the table
UNRECORDED_CHANGE_S = 30.0  # a shadow with no model change in the job's record, this long


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _lock_key(job_id: int, slot: int) -> str:
    return f"embedding_job:{job_id}:{slot}"


def _lock(conn: psycopg.Connection, job_id: int, slot: int, wait_s: float) -> bool:
    key = _lock_key(job_id, slot)
    if wait_s <= 0:
        row = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", [key]).fetchone()
        return bool(row and row[0])
    conn.execute("SELECT set_config('lock_timeout', %s, false)", [f"{int(wait_s * 1000)}ms"])
    try:
        conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [key])
        return True
    except psycopg.errors.LockNotAvailable:
        return False
    finally:
        conn.execute("SELECT set_config('lock_timeout', '0', false)")


def run(job_id: int, slot: int, task_id: str, *, nudge: bool, node: str = "") -> str:
    """Run the slot's batches for a while, then hand over; returns what happened. ``node``
    is the Celery worker's name (``name@host``): where a job that embeds on the workers
    records its vectors were made (default: this process's host:pid)."""
    node = node or worker_name()
    close_old_connections()
    job = EmbeddingJob.objects.filter(pk=job_id).first()
    if job is None or job.state != EmbeddingJob.State.ACTIVE:
        return "inactive"
    runner, _ = JobRunner.objects.get_or_create(job=job, slot=slot)
    if not nudge and runner.next_task != task_id:
        return "superseded"
    try:
        conn = connect(job.database)
    except JobError as exc:
        _blocked(job, str(exc))
        dispatch.run_job_slot(job_id, slot, nudge=False, countdown=BLOCKED_WAIT_S)
        return "server unreachable"
    with conn:
        # pg_stat_activity shows whose batch a session runs.
        conn.execute(
            "SELECT set_config('application_name', %s, false)",
            [f"embedding job {job_id} slot {slot} {node}"[:63]],
        )
        if not _lock(conn, job_id, slot, NUDGE_WAIT_S if nudge else 0):
            return "slot busy"
        JobRunner.objects.filter(pk=runner.pk).update(
            next_task="", worker=worker_name(), started_at=timezone.now()
        )
        countdown = 0.0
        try:
            outcome = _batches(conn, job, runner, node)
            if outcome == "refused":  # to the queue again: another worker may take it
                outcome, countdown = "active", REFUSED_WAIT_S
        except Exception as exc:  # the chain must go on: record why, hand over a bit later
            log.exception("job %s slot %s: batch loop failed", job_id, slot)
            _blocked(job, f"unexpected error: {exc!r}; see the worker's log")
            outcome, countdown = "active", BLOCKED_WAIT_S
    # Closing the connection released the slot's lock.
    if outcome in ("active", "idle"):
        dispatch.run_job_slot(
            job_id, slot, nudge=False, countdown=IDLE_RECHECK_S if outcome == "idle" else countdown
        )
        nudge_abandoned()
    return outcome


def _batches(conn: psycopg.Connection, job: EmbeddingJob, runner: JobRunner, node: str) -> str:
    deadline = time.monotonic() + RUN_S
    last_work = time.monotonic()
    unrecorded_since: float | None = None
    refusal_cleared = False
    conn.autocommit = False
    while time.monotonic() < deadline:
        # Read again each time: pause, delete and a model change take effect at once.
        current = EmbeddingJob.objects.filter(pk=job.pk).first()
        if current is None or current.state != EmbeddingJob.State.ACTIVE:
            return current.state if current else "deleted"
        job = current
        try:
            result = batches.run_batch(conn, job, node)
            if not result.taken and _caught_up(conn, job, runner.slot):
                continue
        except onworker.WorkerRefused as exc:
            _refused(job, node, str(exc))
            return "refused"
        except batches.JobBlocked as exc:
            _blocked(job, str(exc))
            time.sleep(min(BLOCKED_WAIT_S, max(0.0, deadline - time.monotonic())))
            continue
        except batches.StaleJob:
            if job.next_model_uri:  # the swap committed; its record is late, or was lost
                _finish_model_change(conn, job)
                continue
            # A change started on the server, and the console records it a moment later.
            unrecorded_since = unrecorded_since or time.monotonic()
            wait = POLL_S
            if time.monotonic() - unrecorded_since >= UNRECORDED_CHANGE_S:
                _blocked(
                    job,
                    "a model change was started on the server but the console has no record"
                    " of it (the console stopped midway?); change the model again",
                )
                wait = BLOCKED_WAIT_S
            time.sleep(min(wait, max(0.0, deadline - time.monotonic())))
            continue
        except psycopg.errors.UndefinedTable as exc:
            # Deleted while this batch started, or the user dropped the table: say so, stop.
            if EmbeddingJob.objects.filter(pk=job.pk, state=EmbeddingJob.State.ACTIVE).exists():
                _blocked(job, f"{batches.describe(exc)}; delete the job or create the table again")
            return "gone"
        except psycopg.OperationalError as exc:  # the connection is gone: a new task reconnects
            _blocked(job, batches.describe(exc))
            return "active"
        unrecorded_since = None
        if not result.taken:
            if time.monotonic() - last_work >= IDLE_S:
                return "idle"
            time.sleep(POLL_S)
            continue
        last_work = time.monotonic()
        if job.embed_on == EmbeddingJob.EmbedOn.WORKER and not refusal_cleared:
            WorkerRefusal.objects.filter(job=job, worker=node).delete()  # it embeds again
            refusal_cleared = True
        now = timezone.now()
        EmbeddingJob.objects.filter(pk=job.pk).update(
            embedded_rows=F("embedded_rows") + result.embedded,
            last_batch_at=now,
            last_error="",
        )
        JobRunner.objects.filter(pk=runner.pk).update(batches=F("batches") + 1)
    return "active"


def _caught_up(conn: psycopg.Connection, job: EmbeddingJob, slot: int) -> bool:
    """Finish what waits for an empty queue; True when the job changed (a model change
    ended), so the loop goes on with the job read again."""
    with conn.transaction():
        if not objects.queue_empty(conn, job):
            return False
    if job.next_model_uri:
        return _finish_model_change(conn, job)
    now = timezone.now()
    if job.backfill_done_at is None:
        EmbeddingJob.objects.filter(pk=job.pk, backfill_done_at__isnull=True).update(
            backfill_done_at=now
        )
        log.info("job %s: backfill done", job.pk)
    retry_after = job.last_error_at is None or now - job.last_error_at > INDEX_RETRY_AFTER
    if job.build_index and job.index_built_at is None and slot == 0 and retry_after:
        _build_index(conn, job)
    return False


def _finish_model_change(conn: psycopg.Connection, job: EmbeddingJob) -> bool:
    with conn.transaction():
        pending = objects.exists(conn, objects.destination(job, shadow=True))
    if pending:  # else the swap committed, and only this record of it was lost
        try:
            with conn.transaction():
                conn.execute("SELECT set_config('lock_timeout', %s, true)", [SWAP_LOCK_TIMEOUT])
                if not objects.finish_model_change(conn, job):
                    return False
        except psycopg.errors.LockNotAvailable:
            log.info("job %s: the table is busy; the model change ends at the next try", job.pk)
            return False
    EmbeddingJob.objects.filter(pk=job.pk).update(
        model_uri=job.next_model_uri,
        dimensions=job.next_dimensions,
        text_prefix=job.next_text_prefix,
        next_model_uri="",
        next_dimensions=None,
        next_text_prefix="",
        backfill_done_at=timezone.now(),
        index_built_at=None,
    )
    log.info("job %s: now embedded with %s", job.pk, job.next_model_uri)
    return True


def _build_index(conn: psycopg.Connection, job: EmbeddingJob) -> None:
    conn.autocommit = True  # CREATE INDEX CONCURRENTLY runs in no transaction
    try:
        objects.build_index(conn, job)
    except psycopg.Error as exc:
        _blocked(job, f"building the HNSW index failed: {batches.describe(exc)}")
        return
    finally:
        conn.autocommit = False
    EmbeddingJob.objects.filter(pk=job.pk).update(index_built_at=timezone.now())
    log.info("job %s: HNSW index %s built", job.pk, objects.index_name(job))


def _refused(job: EmbeddingJob, node: str, reason: str) -> None:
    """Record that worker ``node`` cannot embed the job's batches, and why (the job's page
    lists it); the batch goes back to the queue for another worker."""
    log.warning("job %s: worker %s refuses its batches: %s", job.pk, node, reason)
    refusal, created = WorkerRefusal.objects.get_or_create(
        job=job, worker=node, defaults={"reason": reason, "refused_at": timezone.now()}
    )
    if not created:
        WorkerRefusal.objects.filter(pk=refusal.pk).update(
            reason=reason, refused_at=timezone.now(), refusals=F("refusals") + 1
        )


def _blocked(job: EmbeddingJob, reason: str) -> None:
    log.warning("job %s waits: %s", job.pk, reason)
    EmbeddingJob.objects.filter(pk=job.pk).update(last_error=reason, last_error_at=timezone.now())


def nudge_abandoned() -> None:
    """Nudge the slots of active jobs whose handed-over task never started (lost with a
    worker that stopped for good): any live runner watches over all jobs, and so does the
    sweeper."""
    now = timezone.now()
    active = JobRunner.objects.filter(job__state=EmbeddingJob.State.ACTIVE)
    for runner in active.filter(handed_over_at__lt=now - ABANDONED_AFTER).exclude(next_task=""):
        # One nudge per period, whichever runner notices first.
        claimed = JobRunner.objects.filter(
            pk=runner.pk, handed_over_at=runner.handed_over_at
        ).update(handed_over_at=now)
        if claimed:
            dispatch.run_job_slot(runner.job_id, runner.slot, nudge=True)
    # A slot taken that long ago and never handed over lost its worker mid-run (a run hands
    # over within seconds): a nudge takes it up once that worker's connection, and with it
    # the slot's lock, is gone. A slot still running (a long index build) keeps its lock, and
    # the nudge gives up.
    for runner in active.filter(next_task="", started_at__lt=now - ABANDONED_AFTER):
        claimed = JobRunner.objects.filter(
            pk=runner.pk, next_task="", started_at=runner.started_at
        ).update(started_at=now)
        if claimed:
            dispatch.run_job_slot(runner.job_id, runner.slot, nudge=True)


def nudge_active_jobs() -> list[int]:
    """Nudge every slot of every active job (a worker that starts does this), once the
    creations a stopped process left half-done are undone."""
    service.clean_up_interrupted()
    jobs = list(EmbeddingJob.objects.filter(state=EmbeddingJob.State.ACTIVE))
    for job in jobs:
        for slot in range(job.workers):
            dispatch.run_job_slot(job.pk, slot, nudge=True)
    return [job.pk for job in jobs]
