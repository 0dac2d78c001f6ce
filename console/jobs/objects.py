"""What a job owns in the user's database, and the SQL that reads and writes it.

Per job, in schema ``embedding_jobs``: ``job_<id>_queue`` (keys waiting to be embedded, with
attempts, next attempt time and last error), ``job_<id>_failed`` (keys given up on, with the
reason) and ``job_<id>_stamps`` (which model embedded each key, when, and how many times),
plus one trigger function and three triggers on the user's table. Every name is derived from
the job id and passed through ``sql.Identifier``; the only text taken from the server as SQL
is the key column's type, as ``format_type()`` spells it.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import psycopg
from psycopg import sql

from console.jobs.models import EmbeddingJob

SCHEMA = "embedding_jobs"


@dataclass(frozen=True)
class Names:
    job_id: int

    def _table(self, what: str) -> sql.Identifier:
        return sql.Identifier(SCHEMA, f"job_{self.job_id}_{what}")

    @property
    def queue(self) -> sql.Identifier:
        return self._table("queue")

    @property
    def failed(self) -> sql.Identifier:
        return self._table("failed")

    @property
    def stamps(self) -> sql.Identifier:
        return self._table("stamps")

    @property
    def function(self) -> sql.Identifier:
        return self._table("on_write")

    def trigger(self, what: str) -> sql.Identifier:
        return sql.Identifier(f"embedding_job_{self.job_id}_{what}")


def table(job: EmbeddingJob) -> sql.Identifier:
    return sql.Identifier(job.schema_name, job.table_name)


def key_array(job: EmbeddingJob) -> sql.Composable:
    """``%s::<key type>[]``: the keys of a batch as one parameter."""
    return sql.SQL("%s::{}[]").format(sql.SQL(job.key_type))


def format_fields(text_format: str) -> list[str]:
    """The column names a format refers to; ValueError for a format that is not plain
    ``{column}`` fields and text."""
    fields = []
    for _literal, field, spec, conversion in string.Formatter().parse(text_format):
        if field is None:
            continue
        if not field or spec or conversion:
            raise ValueError(
                f"the format {text_format!r} may only name columns, as in '{{title}}: {{body}}'"
            )
        fields.append(field)
    return fields


def text_expression(job: EmbeddingJob) -> sql.Composable:
    """The text a row is embedded from: the format (or the columns, one per line) with the
    input type's prefix. A row whose text columns are all NULL has NULL text, and so a NULL
    embedding; an empty text is the model's to refuse."""
    columns = [sql.Identifier(name) for name in job.text_columns]
    if job.text_format:
        parts: list[sql.Composable] = []
        for literal, field, _spec, _conv in string.Formatter().parse(job.text_format):
            if literal:
                parts.append(sql.Literal(literal))
            if field:
                parts.append(sql.SQL("{}::text").format(sql.Identifier(field)))
        body: sql.Composable = sql.SQL("concat({})").format(sql.SQL(", ").join(parts))
    elif len(columns) == 1:
        return _prefixed(job, sql.SQL("{}::text").format(columns[0]))
    else:
        body = sql.SQL("concat_ws(E'\\n', {})").format(sql.SQL(", ").join(columns))
    guarded = sql.SQL("CASE WHEN num_nonnulls({}) = 0 THEN NULL ELSE {} END").format(
        sql.SQL(", ").join(columns), body
    )
    return _prefixed(job, guarded)


def _prefixed(job: EmbeddingJob, expression: sql.Composable) -> sql.Composable:
    if not job.text_prefix:
        return expression
    return sql.SQL("({} || {})").format(sql.Literal(job.text_prefix), expression)


def create(conn: psycopg.Connection, job: EmbeddingJob) -> int:
    """Create the job's tables and triggers and queue every existing key (the backfill), in
    the caller's transaction; returns how many keys were queued. Creating the triggers locks
    out writers until the transaction ends, so no row is missed and none is queued twice."""
    n = Names(job.pk)
    key = sql.Identifier(job.key_column)
    key_type = sql.SQL(job.key_type)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
    conn.execute(
        sql.SQL(
            "CREATE TABLE {q} (id bigserial PRIMARY KEY, key {t} NOT NULL,"
            " attempts integer NOT NULL DEFAULT 0,"
            " next_attempt_at timestamptz NOT NULL DEFAULT now(),"
            " last_error text, queued_at timestamptz NOT NULL DEFAULT now())"
        ).format(q=n.queue, t=key_type)
    )
    conn.execute(sql.SQL("CREATE INDEX ON {} (key)").format(n.queue))
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (key {} PRIMARY KEY, reason text NOT NULL,"
            " attempts integer NOT NULL, failed_at timestamptz NOT NULL DEFAULT now())"
        ).format(n.failed, key_type)
    )
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (key {} PRIMARY KEY, model text NOT NULL,"
            " embedded_at timestamptz NOT NULL, embeddings integer NOT NULL DEFAULT 1)"
        ).format(n.stamps, key_type)
    )
    conn.execute(sql.SQL("CREATE INDEX ON {} (embedded_at)").format(n.stamps))  # the rate
    # A pending entry that no worker holds is reused (and locked until this write commits,
    # so no worker reads the text before it); one a worker holds is left to it, and a new
    # entry follows, so the change is embedded after that batch. Writers never wait on a
    # worker, and workers skip rows writers hold: no deadlock either way.
    body = sql.SQL(
        """
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    DELETE FROM {q}; DELETE FROM {f}; DELETE FROM {s};
  ELSIF TG_OP = 'DELETE' THEN
    DELETE FROM {q} WHERE key = OLD.{k};
    DELETE FROM {f} WHERE key = OLD.{k};
    DELETE FROM {s} WHERE key = OLD.{k};
  ELSE
    UPDATE {q} SET attempts = 0, next_attempt_at = now(), last_error = NULL
     WHERE id = (SELECT id FROM {q} WHERE key = NEW.{k} LIMIT 1 FOR UPDATE SKIP LOCKED);
    IF NOT FOUND THEN
      INSERT INTO {q} (key) VALUES (NEW.{k});
    END IF;
  END IF;
  RETURN NULL;
END
"""
    ).format(q=n.queue, f=n.failed, s=n.stamps, k=key)
    conn.execute(
        sql.SQL(
            "CREATE FUNCTION {} () RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER"
            " SET search_path = pg_catalog, pg_temp AS {}"
        ).format(n.function, sql.Literal(body.as_string(conn)))
    )
    target = table(job)
    conn.execute(
        sql.SQL(
            "CREATE TRIGGER {} AFTER INSERT OR DELETE ON {} FOR EACH ROW EXECUTE FUNCTION {}()"
        ).format(n.trigger("write"), target, n.function)
    )
    columns = [sql.Identifier(c) for c in job.text_columns]
    changed = sql.SQL(" OR ").join(
        sql.SQL("OLD.{c} IS DISTINCT FROM NEW.{c}").format(c=c) for c in columns
    )
    conn.execute(
        sql.SQL(
            "CREATE TRIGGER {} AFTER UPDATE OF {} ON {} FOR EACH ROW WHEN ({})"
            " EXECUTE FUNCTION {}()"
        ).format(n.trigger("update"), sql.SQL(", ").join(columns), target, changed, n.function)
    )
    conn.execute(
        sql.SQL(
            "CREATE TRIGGER {} AFTER TRUNCATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION {}()"
        ).format(n.trigger("truncate"), target, n.function)
    )
    cursor = conn.execute(
        sql.SQL("INSERT INTO {} (key) SELECT {} FROM {} ORDER BY 1").format(n.queue, key, target)
    )
    return cursor.rowcount


def drop(conn: psycopg.Connection, job: EmbeddingJob, *, drop_column: bool = False) -> None:
    """Remove the job's triggers and tables (and with ``drop_column``, its vectors)."""
    n = Names(job.pk)
    target = table(job)
    # The user's table first, as a batch takes it: a batch in flight ends before, and the next
    # one waits and then finds the queue gone.
    conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(target))
    for what in ("write", "update", "truncate"):
        conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(n.trigger(what), target))
    conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {} ()").format(n.function))
    for name in (n.queue, n.failed, n.stamps):
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))
    if drop_column:
        conn.execute(
            sql.SQL("ALTER TABLE {} DROP COLUMN IF EXISTS {}").format(
                target, sql.Identifier(job.destination_column)
            )
        )
