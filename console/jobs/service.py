"""Creating, pausing, resuming, deleting and watching embedding jobs: what the
``embedjob`` command (and later the Jobs page) calls. The batches run on workers
(``runner.py``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction
from django.utils import timezone
from psycopg import sql

from console.jobs import dispatch, objects
from console.jobs.batches import describe
from console.jobs.models import EmbeddingJob
from console.sidecar import sidecar_client
from inference import catalog as model_catalog
from inference.catalog import CatalogError
from inference.client import InferenceError, InferenceUnavailable
from serverparams.server import ServerError, get_managed_server

log = logging.getLogger(__name__)

User = AbstractBaseUser | AnonymousUser
EXTENSIONS = ("vector", "azure_local_ai")
DDL_LOCK_TIMEOUT = "10s"
CHECK_TIMEOUT_S = 10.0
RATE_WINDOW_S = 60
# A job still being created this long after its row was saved was interrupted (see create).
INTERRUPTED_AFTER = timedelta(minutes=5)


class JobError(ValueError):
    """A job cannot be created or changed as asked; the message says why and what to do, and
    ``field`` names the argument of ``create`` it is about (None: the request as a whole)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Progress:
    total: int  # rows in the table now (the job's counts)
    done: int  # rows embedded with their current text: neither pending nor failed
    pending: int  # keys waiting in the queue
    failed: int  # keys given up on
    # Embeddings written per second over the last RATE_WINDOW_S seconds (0: none written).
    rows_per_s: float = field(default=0.0, compare=False)
    chunks: int | None = None  # rows of the chunk table (None: the job does not chunk)
    chunked: int | None = None  # rows split into more than one chunk
    reembedding: str = ""  # the model the rows are being embedded again with, if any
    # When the table was last counted row by row (created, first counted, or Recount).
    recounted_at: datetime | None = field(default=None, compare=False)

    @property
    def percent(self) -> int:
        return 100 if self.total == 0 else min(100, self.done * 100 // self.total)

    @property
    def eta_s(self) -> float | None:
        """Seconds until the queue is empty at the recent rate; None while nothing moves."""
        if not self.pending:
            return 0.0
        return self.pending / self.rows_per_s if self.rows_per_s > 0 else None


def connect(database: str, *, autocommit: bool = True) -> psycopg.Connection:
    """A connection to ``database`` of the managed server, in the date style psycopg reads
    (a server whose DateStyle an admin set to another one would otherwise break it)."""
    try:
        conn = get_managed_server().connect(database, autocommit=True)
    except ServerError as exc:
        raise JobError(str(exc)) from None
    conn.execute("SET DateStyle = 'ISO, MDY'")
    conn.autocommit = autocommit
    return conn


def create(
    *,
    database: str,
    table: str,
    key: str,
    columns: list[str],
    model_uri: str,
    column: str,
    text_format: str = "",
    input_type: str = EmbeddingJob.InputType.NONE,
    user: User | None = None,
    chunk_tokens: int | None = None,
    chunk_overlap: int = 0,
    chunk_table: str = "",
    build_index: bool = False,
    embed_on: str = EmbeddingJob.EmbedOn.SERVER,
    **tuning: Any,
) -> EmbeddingJob:
    """Check the request against the server, create the job, its tables and triggers, queue
    every row, and start its runners once committed. With ``chunk_tokens``, texts are split
    into chunks of that many tokens (``chunk_overlap`` shared) and ``column`` is the vector
    column of the chunk table ``chunk_table`` (default ``<table>_chunks``), created beside the
    table. ``build_index``: an HNSW index once backfilled. ``embed_on``: where the texts are
    embedded, ``server`` or ``worker`` (``onworker.py``). ``tuning``: batch_size, workers,
    max_attempts, retry_backoff_s."""
    _check_embed_on(embed_on)
    if input_type not in EmbeddingJob.InputType.values:
        raise JobError(
            f"the input type must be one of {', '.join(EmbeddingJob.InputType.values)}",
            "input_type",
        )
    _check_tuning(tuning)
    columns = [c.strip() for c in columns if c.strip()]
    if not columns:
        raise JobError("name at least one text column", "columns")
    if text_format:
        try:
            fields = objects.format_fields(text_format)
        except ValueError as exc:
            raise JobError(str(exc), "text_format") from None
        strangers = [f for f in fields if f not in columns]
        if strangers or not fields:
            raise JobError(
                f"the format must name only the text columns ({', '.join(columns)}); "
                f"it names {', '.join(strangers) or 'none'}",
                "text_format",
            )
    entry = _embedding_entry(model_uri, "model_uri")
    prefix = entry.prefixes.get(input_type, "") if input_type != "none" else ""
    schema, _, name = table.rpartition(".")
    schema = schema or "public"
    if chunk_tokens is not None:
        chunk_table = chunk_table.strip() or f"{name}_chunks"
        _check_chunking(model_uri, input_type, chunk_tokens, chunk_overlap)
    elif chunk_table or chunk_overlap:
        raise JobError(
            "a chunk table and an overlap need chunking: give the chunk size too", "chunk_tokens"
        )
    clean_up_interrupted()  # one may hold the destination this job asks for
    clash = EmbeddingJob.objects.exclude(state=EmbeddingJob.State.DELETED).filter(
        database=database,
        schema_name=schema,
        table_name=name,
        chunk_table=chunk_table,
        destination_column=column,
    )
    if clash.exists():
        raise JobError(
            f"job #{clash[0].pk} already fills {clash[0].destination}: delete it first",
            "chunk_table" if chunk_tokens is not None else "column",
        )
    with connect(database, autocommit=False) as conn:
        conn.execute("SELECT set_config('lock_timeout', %s, true)", [DDL_LOCK_TIMEOUT])
        _ensure_extensions(conn, database)
        _check_model(conn, model_uri)
        key_type, destination_exists = _check_table(
            conn, schema, name, key, columns, "" if chunk_tokens is not None else column,
            entry.dimensions,
        )  # fmt: skip
        if chunk_tokens is not None:
            _check_chunk_table(conn, schema, chunk_table)
        conn.commit()
        # The row first, as being created (runners ignore it): were the process to stop
        # after the DDL, the row names what to undo (clean_up_interrupted).
        job = EmbeddingJob.objects.create(
            database=database,
            schema_name=schema,
            table_name=name,
            key_column=key,
            key_type=key_type,
            text_columns=columns,
            text_format=text_format,
            model_uri=model_uri,
            input_type=input_type,
            text_prefix=prefix,
            destination_column=column,
            dimensions=entry.dimensions,
            chunk_tokens=chunk_tokens,
            chunk_overlap=chunk_overlap,
            chunk_table=chunk_table,
            build_index=build_index,
            embed_on=embed_on,
            backfill_started_at=timezone.now(),
            created_by=user if user is not None and user.is_authenticated else None,
            created_by_name=(user.get_username() if user is not None else "") or "system",
            state=EmbeddingJob.State.CREATING,
            **tuning,
        )
        try:
            try:
                with conn.transaction():
                    conn.execute("SELECT set_config('lock_timeout', %s, true)", [DDL_LOCK_TIMEOUT])
                    if not destination_exists and chunk_tokens is None:
                        conn.execute(
                            sql.SQL("ALTER TABLE {} ADD COLUMN {} vector({})").format(
                                objects.table(job),
                                sql.Identifier(column),
                                sql.Literal(entry.dimensions),
                            )
                        )
                    backfill_rows = objects.create(conn, job)
            except psycopg.errors.LockNotAvailable:
                raise _table_busy(f"{schema}.{name}") from None
            except psycopg.Error as exc:
                raise JobError(
                    f"creating the job's triggers and queue on {schema}.{name} failed: "
                    f"{describe(exc)}"
                ) from None
        except BaseException:
            _forget(job)  # the DDL rolled back: nothing was made in the user's database
            raise
        try:
            activated = EmbeddingJob.objects.filter(
                pk=job.pk, state=EmbeddingJob.State.CREATING
            ).update(state=EmbeddingJob.State.ACTIVE, backfill_rows=backfill_rows)
            if not activated:
                raise JobError(f"job #{job.pk} was undone while it was being created; try again")
        except BaseException:
            # The column is dropped only where this creation added it (a chunk table always).
            _undo(conn, job, drop_column=not destination_exists)
            raise
    job.state = EmbeddingJob.State.ACTIVE
    job.backfill_rows = backfill_rows
    transaction.on_commit(lambda: start_runners(job))
    return job


def _forget(job: EmbeddingJob) -> None:
    """Delete the row of a job whose creation failed before anything was made for it."""
    try:
        EmbeddingJob.objects.filter(pk=job.pk, state=EmbeddingJob.State.CREATING).delete()
    except Exception:  # the console's database failed: clean_up_interrupted deletes it later
        log.exception("could not delete the row of job %s, whose creation failed", job.pk)


def _undo(conn: psycopg.Connection, job: EmbeddingJob, *, drop_column: bool) -> None:
    """Drop what a failed creation made in the user's database, then its row. Where the drop
    fails too, the row stays, being created, for ``clean_up_interrupted`` to try again."""
    try:
        if conn.closed:
            raise psycopg.OperationalError("the connection to the user's database is closed")
        conn.rollback()
        with conn.transaction():
            conn.execute("SELECT set_config('lock_timeout', %s, true)", [DDL_LOCK_TIMEOUT])
            objects.drop(conn, job, drop_column=drop_column)
    except psycopg.Error:
        log.exception("could not drop the triggers and tables of job %s, whose creation failed",
                      job.pk)  # fmt: skip
        return
    _forget(job)


def clean_up_interrupted() -> list[int]:
    """Undo the creations that stopped half-way (the process creating them stopped): jobs
    still being created ``INTERRUPTED_AFTER`` after their row was saved lose their triggers,
    tables and chunk table, then their row. A destination column the creation may have added
    stays (it may have been there before: a later job reuses it). Called when a job is
    created and when a worker starts. Returns the ids undone."""
    undone: list[int] = []
    stale = EmbeddingJob.objects.filter(
        state=EmbeddingJob.State.CREATING, created_at__lt=timezone.now() - INTERRUPTED_AFTER
    )
    for job in stale:
        try:
            with connect(job.database, autocommit=False) as conn:
                # A creation still running holds the table: it times out here, and is left be.
                conn.execute("SELECT set_config('lock_timeout', %s, true)", [DDL_LOCK_TIMEOUT])
                objects.drop(conn, job, drop_column=job.chunking)
        except (JobError, psycopg.Error) as exc:
            log.warning("could not undo the interrupted creation of job %s: %s", job.pk, exc)
            continue
        if EmbeddingJob.objects.filter(pk=job.pk, state=EmbeddingJob.State.CREATING).delete()[0]:
            log.info("undid the interrupted creation of job %s", job.pk)
            undone.append(job.pk)
    return undone


# The range of each setting of a job's batches.
TUNING_LIMITS: dict[str, tuple[float, float]] = {
    "batch_size": (1, 2048),
    "workers": (1, 32),
    "max_attempts": (1, 100),
    "retry_backoff_s": (0, 86400),
}


def _embedding_entry(model_uri: str, field: str | None = None) -> model_catalog.CatalogEntry:
    """The catalog entry of ``model_uri``, which must be an embedding model: a reranker scores
    (query, document) pairs and gives no vectors to store."""
    try:
        entry = model_catalog.catalog().get(model_uri)
    except CatalogError as exc:
        raise JobError(str(exc), field) from None
    if entry.kind != "embedding":
        raise JobError(
            f"{model_uri} is a {entry.kind} model (a cross-encoder: it scores query-document "
            "pairs and gives no embeddings); an embedding job needs an embedding model",
            field,
        )
    return entry


def _table_busy(table: str) -> JobError:
    return JobError(
        f"{table} stayed locked by another session for {DDL_LOCK_TIMEOUT}; "
        "try again when it is free",
        "table",
    )


def _check_embed_on(embed_on: str) -> None:
    if embed_on not in EmbeddingJob.EmbedOn.values:
        raise JobError(
            f"where to embed must be one of {', '.join(EmbeddingJob.EmbedOn.values)},"
            f" not {embed_on!r}",
            "embed_on",
        )


def set_embed_on(job: EmbeddingJob, embed_on: str) -> None:
    """Embed the job's next batches on the server or on the workers; batches running now
    finish as they started. Vectors are the same either way (a worker embeds only with the
    server's own model files), so nothing is embedded again."""
    _check_embed_on(embed_on)
    if job.state in (EmbeddingJob.State.DELETED, EmbeddingJob.State.CREATING):
        raise JobError(f"job #{job.pk} is {job.get_state_display().lower()}")
    EmbeddingJob.objects.filter(pk=job.pk).update(embed_on=embed_on)
    job.embed_on = embed_on
    if embed_on == EmbeddingJob.EmbedOn.SERVER:
        job.refusals.all().delete()  # no worker embeds it now


def _check_tuning(tuning: dict[str, Any]) -> None:
    for name, value in tuning.items():
        if name not in TUNING_LIMITS:
            raise TypeError(f"unknown job setting {name}")
        low, high = TUNING_LIMITS[name]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise JobError(f"{name.replace('_', ' ')} must be a number from {low} to {high}", name)


def _check_chunking(model_uri: str, input_type: str, size: int, overlap: int) -> None:
    """Ask the sidecar, which knows the model's tokenizer, whether such chunks fit."""
    try:
        with sidecar_client(CHECK_TIMEOUT_S) as client:
            client.chunks(
                model_uri, ["a"], size, overlap, None if input_type == "none" else input_type
            )
    except InferenceUnavailable as exc:
        raise JobError(
            f"cannot check the chunk size with the inference sidecar: {exc}", "chunk_tokens"
        ) from None
    except InferenceError as exc:
        if exc.status in (404, 409):  # the model: unknown to the sidecar, or not loaded
            raise JobError(exc.message, "model_uri") from None
        field = "chunk_overlap" if exc.message.find("overlap") >= 0 else "chunk_tokens"
        raise JobError(f"chunking: {exc.message}", field) from None


def _check_chunk_table(conn: psycopg.Connection, schema: str, name: str) -> None:
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL",
        [sql.Identifier(schema, name).as_string(conn)],
    ).fetchone()
    if row and row[0]:
        raise JobError(
            f"{schema}.{name} exists already; name another chunk table (the job creates it)",
            "chunk_table",
        )


def _ensure_extensions(conn: psycopg.Connection, database: str) -> None:
    for name in EXTENSIONS:
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(name))
                )
        except psycopg.errors.InsufficientPrivilege:
            raise JobError(
                f"the managed server does not allow the extension {name} in database "
                f"{database}: add it to azure.extensions (Server parameters), or deploy a model, "
                "which allows vector and azure_local_ai",
                "database",
            ) from None


def _check_model(conn: psycopg.Connection, model_uri: str) -> None:
    try:
        with conn.transaction():
            row = conn.execute("SELECT azure_local_ai.model_loaded(%s)", [model_uri]).fetchone()
    except psycopg.errors.UndefinedObject:
        raise JobError(
            f"{model_uri} is not deployed: deploy it first (manage.py deploy {model_uri})",
            "model_uri",
        ) from None
    except psycopg.Error as exc:
        raise JobError(
            f"the server cannot ask the inference sidecar about {model_uri}: "
            f"{(exc.diag.message_primary or str(exc)).strip()}",
            "model_uri",
        ) from None
    if not row or not row[0]:
        raise JobError(f"{model_uri} is registered but not loaded: deploy it again", "model_uri")


def _check_table(
    conn: psycopg.Connection,
    schema: str,
    name: str,
    key: str,
    columns: list[str],
    destination: str,
    dimensions: int,
) -> tuple[str, bool]:
    """The key's type, and whether the destination column exists (with the right type)."""
    row = conn.execute(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
        [schema, name],
    ).fetchone()
    if row is None:
        raise JobError(f"there is no table {schema}.{name} in this database", "table")
    oid = row[0]
    types = dict(
        conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped",
            [oid],
        ).fetchall()
    )
    missing = [c for c in [key, *columns] if c not in types]
    if missing:
        raise JobError(
            f"{schema}.{name} has no column {', '.join(missing)} (its columns: {', '.join(types)})",
            "key" if key in missing else "columns",
        )
    unique = conn.execute(
        "SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
        " AND a.attnum = i.indkey[0] WHERE i.indrelid = %s AND i.indisunique"
        " AND i.indnatts = 1 AND i.indpred IS NULL AND a.attname = %s",
        [oid, key],
    ).fetchone()
    if unique is None:
        raise JobError(
            f"{key} is not the primary key or a unique column of {schema}.{name}: "
            "the job needs a key that names one row",
            "key",
        )
    if not destination:  # the vectors go to a chunk table
        return types[key], False
    if destination in [key, *columns]:
        raise JobError(
            f"the destination column {destination} cannot be the key or a text column", "column"
        )
    wanted = f"vector({dimensions})"
    current = types.get(destination)
    if current is not None and current != wanted:
        raise JobError(
            f"{schema}.{name}.{destination} is {current}; the model gives {wanted}: "
            "name another column (it is created when missing)",
            "column",
        )
    return types[key], current is not None


def start_runners(job: EmbeddingJob) -> None:
    """Send a nudge for each of the job's runner slots (one that runs already ignores it)."""
    for slot in range(job.workers):
        dispatch.run_job_slot(job.pk, slot, nudge=True)


def _set_state(job: EmbeddingJob, state: str, allowed: tuple[str, ...]) -> None:
    if job.state not in allowed:
        raise JobError(f"job #{job.pk} is {job.state}")
    EmbeddingJob.objects.filter(pk=job.pk).update(state=state)
    job.refresh_from_db()


def pause(job: EmbeddingJob) -> None:
    """Stop taking batches (the batch running ends first); writes are still queued."""
    _set_state(job, EmbeddingJob.State.PAUSED, (EmbeddingJob.State.ACTIVE,))


def resume(job: EmbeddingJob) -> None:
    _set_state(job, EmbeddingJob.State.ACTIVE, (EmbeddingJob.State.PAUSED,))
    start_runners(job)


def change_model(job: EmbeddingJob, model_uri: str) -> int:
    """Embed every row again with ``model_uri``, in the background, into a shadow of the
    destination that replaces it once done: queries keep the current vectors until then.
    Returns how many rows were queued."""
    if job.state in (EmbeddingJob.State.DELETED, EmbeddingJob.State.CREATING):
        raise JobError(f"job #{job.pk} is {job.state}")
    if job.next_model_uri:
        raise JobError(
            f"job #{job.pk} is already being embedded again with {job.next_model_uri}; "
            "wait until that ends"
        )
    if model_uri == job.model_uri:
        raise JobError(f"job #{job.pk} embeds with {model_uri} already")
    entry = _embedding_entry(model_uri)
    prefix = entry.prefixes.get(job.input_type, "") if job.input_type != "none" else ""
    if job.chunking:
        assert job.chunk_tokens is not None
        _check_chunking(model_uri, job.input_type, job.chunk_tokens, job.chunk_overlap)
    try:
        with connect(job.database, autocommit=False) as conn:
            conn.execute("SELECT set_config('lock_timeout', %s, true)", [DDL_LOCK_TIMEOUT])
            _check_model(conn, model_uri)
            queued = objects.start_model_change(conn, job, entry.dimensions)
            conn.commit()
    except psycopg.errors.LockNotAvailable:
        raise _table_busy(job.qualified_table) from None
    except psycopg.Error as exc:
        raise JobError(
            f"starting the model change of job #{job.pk} failed: {describe(exc)}"
        ) from None
    EmbeddingJob.objects.filter(pk=job.pk).update(
        next_model_uri=model_uri,
        next_dimensions=entry.dimensions,
        next_text_prefix=prefix,
        backfill_started_at=timezone.now(),
        backfill_done_at=None,
    )
    job.refresh_from_db()
    if job.state == EmbeddingJob.State.ACTIVE:
        start_runners(job)
    return queued


def delete(job: EmbeddingJob, *, drop_column: bool = False) -> None:
    """Stop the job and drop its triggers and tables (and with ``drop_column`` its vectors:
    the destination column, or the chunk table); the job's row stays, deleted, as history."""
    if job.state == EmbeddingJob.State.DELETED:
        raise JobError(f"job #{job.pk} is deleted already")
    if job.state == EmbeddingJob.State.CREATING:  # its creation finishes, or is undone
        raise JobError(f"job #{job.pk} is being created")
    # Dropped first, in one transaction: a failure leaves the job as it was. A runner's batch
    # in flight finishes first (it holds the tables), and its next one finds them gone.
    try:
        with connect(job.database, autocommit=False) as conn:
            conn.execute("SELECT set_config('lock_timeout', %s, true)", [DDL_LOCK_TIMEOUT])
            objects.drop(conn, job, drop_column=drop_column)
    except psycopg.Error as exc:
        raise JobError(
            f"dropping job #{job.pk}'s triggers and tables failed: {describe(exc)}"
        ) from None
    EmbeddingJob.objects.filter(pk=job.pk).update(state=EmbeddingJob.State.DELETED)
    job.refresh_from_db()


def retry_failed(job: EmbeddingJob) -> int:
    """Queue the failed keys again with fresh attempts; returns how many."""
    n = objects.Names(job.pk)
    with connect(job.database, autocommit=False) as conn:
        moved = conn.execute(
            sql.SQL(
                "WITH moved AS (DELETE FROM {} RETURNING key) INSERT INTO {} (key)"
                " SELECT key FROM moved"
            ).format(n.failed, n.queue)
        ).rowcount
    if job.state == EmbeddingJob.State.ACTIVE:
        start_runners(job)
    return moved


def progress(job: EmbeddingJob, *, chunks: bool = True) -> Progress:
    """The job's figures from its own tables, never by reading the user's table: the row
    count from the job's counts (kept by triggers), pending and failed from its queue and
    failed tables, and done as the rows neither pending nor failed (a row the job knows is
    embedded, queued or failed). ``chunks``: also count the chunk table (the job's page).
    A job created before it had counts gets them here, from one exact count of the table."""
    n = objects.Names(job.pk)
    with connect(job.database) as conn:
        try:
            _ensure_counts(conn, job)
            _fold_counts(conn, job)
            row = _counts(conn, job, n, chunks=chunks)
        except psycopg.Error as exc:
            raise JobError(f"cannot count job #{job.pk}'s progress: {describe(exc)}") from None
    total, outstanding = row[0], row[6]
    return Progress(
        total=total,
        done=max(0, total - outstanding),
        pending=row[1],
        failed=row[2],
        rows_per_s=float(row[3] or 0),
        chunks=row[4] if job.chunking and chunks else None,
        chunked=row[5] if job.chunking and chunks else None,
        reembedding=job.next_model_uri,
        recounted_at=row[7],
    )


# Deltas the counts table may gather before a poll folds them into its base row.
FOLD_AFTER = 100


def _ensure_counts(conn: psycopg.Connection, job: EmbeddingJob) -> None:
    if objects.has_counts(conn, job):
        return
    with conn.transaction():
        conn.execute("SELECT set_config('lock_timeout', %s, true)", [DDL_LOCK_TIMEOUT])
        if objects.add_counts(conn, job):
            log.info("job %s: counted %s once and created its counts", job.pk, job.qualified_table)


def _fold_counts(conn: psycopg.Connection, job: EmbeddingJob) -> None:
    """Fold the delta rows into the base row once there are FOLD_AFTER. Folds (and recounts)
    take a lock that excludes one another but not the writers' triggers."""
    c = objects.Names(job.pk).counts
    row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE id <> 0").format(c)).fetchone()
    if not row or row[0] < FOLD_AFTER:
        return
    with conn.transaction():
        conn.execute(sql.SQL("LOCK TABLE {} IN SHARE UPDATE EXCLUSIVE MODE").format(c))
        conn.execute(
            sql.SQL(
                "WITH d AS (DELETE FROM {c} WHERE id <> 0 RETURNING rows)"
                " UPDATE {c} SET rows = rows + (SELECT coalesce(sum(rows), 0) FROM d)"
                " WHERE id = 0"
            ).format(c=c)
        )


def recount(job: EmbeddingJob) -> tuple[int, int]:
    """Count the job's table exactly, once, and correct its counts; returns the count the
    counts had and the exact one. Writers go on meanwhile: the count and the deltas it
    replaces are read in one snapshot, and deltas committed later are kept."""
    if job.state in (EmbeddingJob.State.DELETED, EmbeddingJob.State.CREATING):
        raise JobError(f"job #{job.pk} is {job.state}")
    c = objects.Names(job.pk).counts
    try:
        with connect(job.database) as conn:
            _ensure_counts(conn, job)
            conn.autocommit = False
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            # The lock comes before the first query, which takes the snapshot: a fold that
            # commits while this waits is then seen by it.
            conn.execute(sql.SQL("LOCK TABLE {} IN SHARE UPDATE EXCLUSIVE MODE").format(c))
            before = conn.execute(sql.SQL("SELECT sum(rows) FROM {}").format(c)).fetchone()
            exact = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(objects.table(job))
            ).fetchone()
            assert before is not None and exact is not None
            conn.execute(sql.SQL("DELETE FROM {} WHERE id <> 0").format(c))
            conn.execute(
                sql.SQL("UPDATE {} SET rows = %s, recounted_at = now() WHERE id = 0").format(c),
                [exact[0]],
            )
            conn.commit()
    except psycopg.Error as exc:
        raise JobError(f"recounting job #{job.pk}'s table failed: {describe(exc)}") from None
    return int(before[0] or 0), int(exact[0])


def _counts(
    conn: psycopg.Connection, job: EmbeddingJob, n: objects.Names, *, chunks: bool
) -> tuple[Any, ...]:
    extra: sql.Composable = sql.SQL("NULL, NULL")
    if job.chunking and chunks:
        chunk_table = objects.destination(job).table
        extra = sql.SQL(
            "(SELECT count(*) FROM {c}),"
            " (SELECT count(*) FROM {c} WHERE chunk_no = 1)"  # keys with a second chunk
        ).format(c=chunk_table)
    # One statement, one snapshot: a write commits its delta and its queue entry together.
    row = conn.execute(
        sql.SQL(
            "SELECT (SELECT sum(rows) FROM {c}),"
            " (SELECT count(DISTINCT key) FROM {q}), (SELECT count(*) FROM {f}),"
            " (SELECT count(*) / greatest(extract(epoch FROM clock_timestamp()"
            "   - min(embedded_at)), 1) FROM {s}"
            "   WHERE embedded_at > clock_timestamp() - make_interval(secs => %s)),"
            " {extra},"
            " (SELECT count(*) FROM (SELECT key FROM {q0} UNION SELECT key FROM {f0}) AS o),"
            " (SELECT recounted_at FROM {c} WHERE id = 0)"
        ).format(
            c=n.counts,
            s=n.stamps,
            q=n.queue,
            f=n.failed,
            q0=n.queue,
            f0=n.failed,
            extra=extra,
        ),
        [RATE_WINDOW_S],
    ).fetchone()
    assert row is not None
    return (int(row[0] or 0), *row[1:])


def recent_embedders(job: EmbeddingJob) -> list[tuple[str, int]]:
    """Who embedded the job's rows in the last minute (``server``, or a worker's name), with
    how many rows each, most first: from the stamps' recent end (their ``embedded_at``
    index), never the whole table. Empty for a job whose stamps do not record it yet."""
    n = objects.Names(job.pk)
    try:
        with connect(job.database) as conn:
            rows = conn.execute(
                sql.SQL(
                    "SELECT embedded_by, count(*) FROM {} WHERE embedded_by IS NOT NULL"
                    " AND embedded_at > clock_timestamp() - make_interval(secs => %s)"
                    " GROUP BY 1 ORDER BY 2 DESC, 1"
                ).format(n.stamps),
                [RATE_WINDOW_S],
            ).fetchall()
    except (psycopg.Error, JobError):
        return []
    return [(str(by), int(count)) for by, count in rows]


def failures(job: EmbeddingJob, limit: int = 20) -> list[tuple[Any, str, int]]:
    """The failed keys with their reason and attempts, most recent first."""
    n = objects.Names(job.pk)
    with connect(job.database) as conn:
        return conn.execute(
            sql.SQL(
                "SELECT key, reason, attempts FROM {} ORDER BY failed_at DESC, key LIMIT %s"
            ).format(n.failed),
            [limit],
        ).fetchall()
