"""One batch of a job, in one transaction of the user's database.

Take up to ``batch_size`` due entries of the job's queue (``FOR UPDATE SKIP LOCKED``, so
workers sharing a job take disjoint batches), lock their rows (``SKIP LOCKED`` again: a row a
writer holds is left for a later batch, so a worker never waits on a writer), read the current
text, embed it with ``azure_local_ai.create_embeddings(model, texts[])``, write the vectors
and the model stamps, delete the entries, commit. Writers never wait on a batch for longer
than it runs, and a batch never waits on a writer's rows, so the two cannot deadlock. A crash
before the commit leaves the queue as it was: nothing is lost and nothing is embedded twice.

When the batch's embedding fails for a reason that belongs to a row (SQLSTATE class 22: a text
the model refuses), the rows are embedded one by one, each under a savepoint, to isolate it:
the failing row gets an attempt and a backoff, or after ``max_attempts`` moves to the failed
table with the reason; the others commit. Any other failure (the sidecar unreachable, the
model not deployed, a timeout) is the job's, not the rows': the batch rolls back untouched and
``JobBlocked`` tells the runner to wait.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from console.jobs import objects
from console.jobs.models import EmbeddingJob

BUSY_RETRY_S = 1.0  # a row a writer holds is tried again after this


class JobBlocked(Exception):
    """The whole job cannot embed now; ``str()`` says why."""


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


def describe(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = (diag.message_primary or str(exc)).strip()
    if diag.message_detail:
        text += f" ({diag.message_detail.strip()})"
    return f"{text} [SQLSTATE {exc.sqlstate}]" if exc.sqlstate else text


def run_batch(conn: psycopg.Connection, job: EmbeddingJob) -> BatchResult:
    n = objects.Names(job.pk)
    target = objects.table(job)
    key = sql.Identifier(job.key_column)
    result = BatchResult()
    with conn.transaction():
        # The table first, in the mode the UPDATE needs: a TRUNCATE (whose trigger empties
        # the queue) or a job's deletion then waits for this batch, rather than this batch,
        # holding queue rows, waiting for them.
        conn.execute(sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(target))
        entries = conn.execute(
            sql.SQL(
                "SELECT id, key, attempts FROM {} WHERE next_attempt_at <= now()"
                " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
            ).format(n.queue),
            [job.batch_size],
        ).fetchall()
        if not entries:
            return result
        result.taken = len(entries)
        ids: dict[Any, list[int]] = defaultdict(list)
        attempts: dict[Any, int] = defaultdict(int)
        for entry_id, entry_key, tries in entries:
            ids[entry_key].append(entry_id)
            attempts[entry_key] = max(attempts[entry_key], tries)
        keys = list(ids)
        texts = dict(
            conn.execute(
                sql.SQL(
                    "SELECT {k}, {text} FROM {t} WHERE {k} = ANY({keys})"
                    " FOR NO KEY UPDATE SKIP LOCKED"
                ).format(
                    k=key, text=objects.text_expression(job), t=target, keys=objects.key_array(job)
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
        try:
            with conn.transaction():
                written = _embed_and_write(conn, job, locked, [texts[k] for k in locked])
        except psycopg.Error as exc:
            if not row_error(exc):
                raise JobBlocked(describe(exc)) from exc
            written = []
            for k in locked:
                try:
                    with conn.transaction():
                        written += _embed_and_write(conn, job, [k], [texts[k]])
                except psycopg.Error as one:
                    if not row_error(one):
                        raise JobBlocked(describe(one)) from one
                    failures[k] = describe(one)
        if written:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {s} (key, model, embedded_at)"
                    " SELECT unnest({keys}), %s, clock_timestamp()"
                    " ON CONFLICT (key) DO UPDATE SET model = excluded.model,"
                    " embedded_at = excluded.embedded_at, embeddings = {s}.embeddings + 1"
                ).format(s=n.stamps, keys=objects.key_array(job)),
                [written, job.model_uri],
            )
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


def _embed_and_write(
    conn: psycopg.Connection, job: EmbeddingJob, keys: list[Any], texts: list[str | None]
) -> list[Any]:
    """Embed ``texts`` in one call of the array overload and write each vector to the row of
    the key at the same position; returns the keys written."""
    rows = conn.execute(
        sql.SQL(
            "UPDATE {t} SET {dest} = e.embedding::vector"
            " FROM unnest({keys}) WITH ORDINALITY AS k(key, ord)"
            " JOIN azure_local_ai.create_embeddings(%s, %s::text[], %s) WITH ORDINALITY"
            " AS e(embedding, ord) USING (ord)"
            " WHERE {t}.{k} = k.key RETURNING {t}.{k}"
        ).format(
            t=objects.table(job),
            dest=sql.Identifier(job.destination_column),
            keys=objects.key_array(job),
            k=sql.Identifier(job.key_column),
        ),
        [keys, job.model_uri, texts, job.batch_size],
    ).fetchall()
    return [row[0] for row in rows]
