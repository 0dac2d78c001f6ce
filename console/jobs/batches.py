"""One batch of a job, in one transaction of the user's database, as the table's owner.

Take up to ``batch_size`` due entries of the job's queue (``FOR UPDATE SKIP LOCKED``, so
workers sharing a job take disjoint batches), lock their rows (``SKIP LOCKED`` again: a row a
writer holds is left for a later batch, so a worker never waits on a writer), read the current
text, embed it with ``azure_local_ai.create_embeddings(model, texts[])`` on the server (or,
for a job that embeds on the workers, with the sidecar beside this worker, checked to serve
the server's very model: ``onworker.py``), write the vectors and the model stamps (with who
embedded them), delete the entries, commit. Writers never wait on a batch for longer
than it runs, and a batch never waits on a writer's rows, so the two cannot deadlock. A crash
before the commit leaves the queue as it was: nothing is lost and nothing is embedded twice.

When the batch's embedding fails for a reason that belongs to a row (SQLSTATE class 22: a text
the model refuses), the rows are embedded one by one, each under a savepoint, to isolate it:
the failing row gets an attempt and a backoff, or after ``max_attempts`` moves to the failed
table with the reason; the others commit. Any other failure (the sidecar unreachable, the
model not deployed, a timeout) is the job's, not the rows': the batch rolls back untouched and
``JobBlocked`` tells the runner to wait.

With chunking, each text is split by the model's tokens (the sidecar's ``/chunks``), and the
key's chunk rows are replaced. During a model change every key is embedded with the new model
into the shadow destination, and a key a write queued also with the current one, so that the
vectors queries use now stay current until the shadow replaces them (``finish_model_change``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from console.jobs import objects, onworker
from console.jobs.models import EmbeddingJob
from console.sidecar import sidecar_client
from inference.client import InferenceClient, InferenceError

CHUNK_TIMEOUT_S = 60.0
BUSY_RETRY_S = 1.0  # a row a writer holds is tried again after this


class JobBlocked(Exception):
    """The whole job cannot embed now; ``str()`` says why."""


class StaleJob(Exception):
    """The job's record is behind its tables: a model change started or ended on the server
    after the record was read (the console commits the server's side first). Nothing was
    taken; read the record again."""


@dataclass
class BatchResult:
    taken: int = 0  # queue entries taken
    embedded: int = 0
    retried: int = 0  # failed, will be tried again
    failed: int = 0  # moved to the failed table


def row_error(exc: psycopg.Error) -> bool:
    """Whether a failure belongs to the text of a row rather than to the job."""
    state = exc.sqlstate or ""
    return state.startswith("22") or state == "54000"


def row_failure(exc: psycopg.Error | onworker.RowRefused) -> str:
    """Why a text failed; JobBlocked when the failure is the job's rather than the row's."""
    if isinstance(exc, onworker.RowRefused):
        return str(exc)
    if not row_error(exc):
        raise JobBlocked(describe(exc)) from exc
    return describe(exc)


def describe(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = (diag.message_primary or str(exc)).strip()
    if diag.message_detail:
        text += f" ({diag.message_detail.strip()})"
    return f"{text} [SQLSTATE {exc.sqlstate}]" if exc.sqlstate else text


def run_batch(conn: psycopg.Connection, job: EmbeddingJob, worker: str = "") -> BatchResult:
    """One batch; ``worker`` names the Celery worker running it (the stamps' provenance of a
    job that embeds on the workers). A job embedding on the workers raises
    ``onworker.WorkerRefused``, having taken nothing, where this worker cannot embed it."""
    n = objects.Names(job.pk)
    target = objects.table(job)
    key = sql.Identifier(job.key_column)
    result = BatchResult()
    objects.add_provenance(conn, job)
    on_worker = job.embed_on == EmbeddingJob.EmbedOn.WORKER
    with onworker.client() if on_worker else nullcontext() as sidecar, conn.transaction():
        # The table first, in the mode the UPDATE needs: a TRUNCATE (whose trigger empties
        # the queue) or a job's deletion then waits for this batch, rather than this batch,
        # holding queue rows, waiting for them.
        conn.execute(sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(target))
        # Held from here to the commit, that lock keeps a model change from starting or ending
        # (both lock the table against it): whether there is a shadow now is fixed, and it
        # must be what the record says, or the batch would embed with the wrong model.
        if objects.exists(conn, objects.destination(job, shadow=True)) != bool(job.next_model_uri):
            raise StaleJob
        objects.act_as_owner(conn, job)
        entries = conn.execute(
            sql.SQL(
                "SELECT id, key, attempts, reembed FROM {} WHERE next_attempt_at <= now()"
                " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
            ).format(n.queue),
            [job.batch_size],
        ).fetchall()
        if not entries:
            return result
        result.taken = len(entries)
        ids: dict[Any, list[int]] = defaultdict(list)
        attempts: dict[Any, int] = defaultdict(int)
        written_to: set[Any] = set()  # keys a write queued (not only a model change)
        for entry_id, entry_key, tries, reembed in entries:
            ids[entry_key].append(entry_id)
            attempts[entry_key] = max(attempts[entry_key], tries)
            if not reembed:
                written_to.add(entry_key)
        keys = list(ids)
        texts = dict(
            conn.execute(
                sql.SQL(
                    "SELECT {k}, {text} FROM {t} WHERE {k} = ANY({keys})"
                    " FOR NO KEY UPDATE SKIP LOCKED"
                ).format(
                    k=key,
                    text=objects.text_expression(job, prefix=""),
                    t=target,
                    keys=objects.key_array(job),
                ),
                [keys],
            ).fetchall()
        )
        unlocked = [k for k in keys if k not in texts]
        if unlocked:
            present = {
                row[0]
                for row in conn.execute(
                    sql.SQL("SELECT {k} FROM {t} WHERE {k} = ANY({keys})").format(
                        k=key, t=target, keys=objects.key_array(job)
                    ),
                    [unlocked],
                )
            }
            busy = [i for k in unlocked if k in present for i in ids[k]]
            gone = [i for k in unlocked if k not in present for i in ids[k]]
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET next_attempt_at = now() + make_interval(secs => %s)"
                    " WHERE id = ANY(%s)"
                ).format(n.queue),
                [BUSY_RETRY_S, busy],
            )
            conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(n.queue), [gone])
        locked = [k for k in keys if k in texts]
        if not locked:
            return result
        failures: dict[Any, str] = {}
        written: list[Any] = []
        # The first plan covers every key of the batch; the others, a part of them.
        for index, plan in enumerate(_plans(conn, job, locked, written_to, worker, sidecar)):
            todo = [k for k in plan.keys if k not in failures]
            try:
                with conn.transaction():
                    done = plan.write(conn, job, todo, texts)
            except (psycopg.Error, onworker.RowRefused) as exc:
                row_failure(exc)
                done = []
                for k in todo:
                    try:
                        with conn.transaction():
                            done += plan.write(conn, job, [k], texts)
                    except (psycopg.Error, onworker.RowRefused) as one:
                        failures[k] = row_failure(one)
            if done:
                plan.stamp(conn, job, done)
            if index == 0:
                written = done
        written = [k for k in written if k not in failures]
        if written:
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE key = ANY({})").format(
                    n.failed, objects.key_array(job)
                ),
                [written],
            )
        # A locked row the UPDATE did not reach was deleted meanwhile: its entries go too.
        finished = [i for k in locked if k not in failures for i in ids[k]]
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(n.queue), [finished])
        result.embedded = len(written)
        for k, reason in failures.items():
            tries = attempts[k] + 1
            if tries >= job.max_attempts:
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (key, reason, attempts) VALUES (%s, %s, %s)"
                        " ON CONFLICT (key) DO UPDATE SET reason = excluded.reason,"
                        " attempts = excluded.attempts, failed_at = now()"
                    ).format(n.failed),
                    [k, reason, tries],
                )
                conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(n.queue), [ids[k]])
                result.failed += 1
            else:
                conn.execute(
                    sql.SQL(
                        "UPDATE {} SET attempts = %s, last_error = %s,"
                        " next_attempt_at = now() + make_interval(secs => %s) WHERE id = ANY(%s)"
                    ).format(n.queue),
                    [tries, reason, job.retry_backoff_s * 2 ** (tries - 1), ids[k]],
                )
                result.retried += 1
    return result


@dataclass(frozen=True)
class Plan:
    """Embedding some keys of a batch with one model into one destination."""

    keys: list[Any]
    model_uri: str
    prefix: str
    destination: objects.Destination
    precision: str
    shadow: bool  # stamps go to next_model
    # Embedding on this worker: the sidecar beside it (None: on the server, in SQL).
    sidecar: InferenceClient | None = None
    embedded_by: str = "server"  # the stamps' provenance: the server, or the worker's name

    def write(self, conn: psycopg.Connection, job: EmbeddingJob, keys: list[Any],
              texts: dict[Any, str | None]) -> list[Any]:  # fmt: skip
        """Embed and write ``keys``; returns those written."""
        if not keys:
            return []
        if self.destination.chunked:
            return _write_chunks(conn, job, self, keys, [texts[k] for k in keys])
        prefixed = [None if texts[k] is None else self.prefix + texts[k] for k in keys]
        names = {
            "t": self.destination.table,
            "dest": self.destination.column,
            "keys": objects.key_array(job),
            "k": sql.Identifier(job.key_column),
        }
        if self.sidecar is not None:
            vectors = onworker.embed(self.sidecar, self.model_uri, prefixed, job.batch_size)
            with onworker.vector_cursor(conn) as cursor:
                rows = cursor.execute(
                    sql.SQL(
                        "UPDATE {t} SET {dest} = v.embedding"
                        " FROM unnest({keys}, %b::vector[]) AS v(key, embedding)"
                        " WHERE {t}.{k} = v.key RETURNING {t}.{k}"
                    ).format(**names),
                    [keys, onworker.as_vectors(vectors)],
                ).fetchall()
            return [row[0] for row in rows]
        rows = conn.execute(
            sql.SQL(
                "UPDATE {t} SET {dest} = e.embedding::vector"
                " FROM unnest({keys}) WITH ORDINALITY AS k(key, ord)"
                " JOIN azure_local_ai.create_embeddings(%s, %s::text[], %s) WITH ORDINALITY"
                " AS e(embedding, ord) USING (ord)"
                " WHERE {t}.{k} = k.key RETURNING {t}.{k}"
            ).format(**names),
            [keys, self.model_uri, prefixed, job.batch_size],
        ).fetchall()
        return [row[0] for row in rows]

    def stamp(self, conn: psycopg.Connection, job: EmbeddingJob, keys: list[Any]) -> None:
        n = objects.Names(job.pk)
        model, precision = (
            (sql.Identifier("next_model"), sql.Identifier("next_precision"))
            if self.shadow
            else (sql.Identifier("model"), sql.Identifier("precision"))
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {s} (key, {m}, {p}, embedded_at, embedded_by)"
                " SELECT unnest({keys}), %s, %s, clock_timestamp(), %s"
                " ON CONFLICT (key) DO UPDATE SET {m} = excluded.{m}, {p} = excluded.{p},"
                " embedded_at = excluded.embedded_at, embedded_by = excluded.embedded_by,"
                " embeddings = {s}.embeddings + 1"
            ).format(s=n.stamps, m=model, p=precision, keys=objects.key_array(job)),
            [keys, self.model_uri, self.precision, self.embedded_by],
        )


def _plans(
    conn: psycopg.Connection,
    job: EmbeddingJob,
    keys: list[Any],
    written_to: set[Any],
    worker: str,
    sidecar: InferenceClient | None,
) -> list[Plan]:
    """What a batch embeds: every key with the job's model, or during a model change every
    key with the new model into the shadow, and keys a write queued with the current one.
    With the worker's ``sidecar``, each model must be the server's (else WorkerRefused)."""

    def plan(plan_keys: list[Any], model_uri: str, prefix: str, shadow: bool) -> Plan:
        served = _served(conn, model_uri)
        if sidecar is not None:
            onworker.check_model(sidecar, served)
        return Plan(
            plan_keys,
            model_uri,
            prefix,
            objects.destination(job, shadow=shadow),
            str(served.get("precision") or "fp32"),
            shadow=shadow,
            sidecar=sidecar,
            embedded_by=(worker or "worker") if sidecar is not None else "server",
        )

    if not job.next_model_uri:
        return [plan(keys, job.model_uri, job.text_prefix, shadow=False)]
    plans = [plan(keys, job.next_model_uri, job.next_text_prefix, shadow=True)]
    also = [k for k in keys if k in written_to]
    if also:
        plans.append(plan(also, job.model_uri, job.text_prefix, shadow=False))
    return plans


def _served(conn: psycopg.Connection, model_uri: str) -> dict[str, Any]:
    """The model as the server's sidecar serves it (``model_metadata``: precision, files),
    as the server's module sees it."""
    try:
        with conn.transaction():
            row = conn.execute("SELECT azure_local_ai.model_metadata(%s)", [model_uri]).fetchone()
    except psycopg.Error as exc:
        raise JobBlocked(describe(exc)) from exc
    return dict(row[0]) if row and isinstance(row[0], dict) else {"model_uri": model_uri}


def _write_chunks(
    conn: psycopg.Connection,
    job: EmbeddingJob,
    plan: Plan,
    keys: list[Any],
    texts: Sequence[str | None],
) -> list[Any]:
    """Replace the chunk rows of ``keys``: split each text by the model's tokens, embed every
    chunk (with the input type's prefix) in one call, write one row per chunk."""
    pieces = _chunks(job, plan.model_uri, texts, plan.sidecar)
    where = plan.destination
    key_type = sql.SQL(job.key_type)
    conn.execute(
        sql.SQL("DELETE FROM {} WHERE key = ANY({})").format(where.table, objects.key_array(job)),
        [keys],
    )
    owners, numbers, chunks = [], [], []
    for k, parts in zip(keys, pieces, strict=True):
        for number, chunk in enumerate(parts):
            owners.append(k)
            numbers.append(number)
            chunks.append(chunk)
    if chunks and plan.sidecar is not None:
        vectors = onworker.embed(
            plan.sidecar, plan.model_uri, [plan.prefix + c for c in chunks], job.batch_size
        )
        with onworker.vector_cursor(conn) as cursor:
            cursor.execute(
                sql.SQL(
                    "INSERT INTO {t} (key, chunk_no, chunk, {col})"
                    " SELECT * FROM unnest(%s::{kt}[], %s::integer[], %s::text[], %b::vector[])"
                ).format(t=where.table, col=where.column, kt=key_type),
                [owners, numbers, chunks, onworker.as_vectors(vectors)],
            )
    elif chunks:
        conn.execute(
            sql.SQL(
                "INSERT INTO {t} (key, chunk_no, chunk, {col})"
                " SELECT c.key, c.no, c.chunk, e.embedding::vector"
                " FROM unnest(%s::{kt}[], %s::integer[], %s::text[]) WITH ORDINALITY"
                " AS c(key, no, chunk, ord)"
                " JOIN azure_local_ai.create_embeddings(%s, %s::text[], %s) WITH ORDINALITY"
                " AS e(embedding, ord) USING (ord)"
            ).format(t=where.table, col=where.column, kt=key_type),
            [owners, numbers, chunks, plan.model_uri,
             [plan.prefix + c for c in chunks], job.batch_size],
        )  # fmt: skip
    return list(keys)


def _chunks(
    job: EmbeddingJob,
    model_uri: str,
    texts: Sequence[str | None],
    sidecar: InferenceClient | None,
) -> list[list[str]]:
    """The chunks of each text (none for NULL; an empty text stays one chunk, for the model
    to refuse), split by a sidecar that knows the model's tokenizer: the worker's when it
    embeds (checked to serve the server's files), else the console's."""
    wanted = [i for i, t in enumerate(texts) if t]
    split: list[list[str]] = [[] if t is None else [t] for t in texts]
    if not wanted:
        return split
    assert job.chunk_tokens is not None
    input_type = None if job.input_type == EmbeddingJob.InputType.NONE else job.input_type
    try:
        with nullcontext(sidecar) if sidecar else sidecar_client(CHUNK_TIMEOUT_S) as client:
            answer = client.chunks(
                model_uri,
                [texts[i] or "" for i in wanted],
                job.chunk_tokens,
                job.chunk_overlap,
                input_type,
            )
    except InferenceError as exc:
        reason = f"splitting texts into chunks with {model_uri} failed: {exc}"
        raise (onworker.WorkerRefused if sidecar else JobBlocked)(reason) from exc
    for i, parts in zip(wanted, answer, strict=True):
        split[i] = parts
    return split
