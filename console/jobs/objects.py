"""What a job owns in the user's database, and the SQL that reads and writes it.

Per job, in schema ``embedding_jobs``: ``job_<id>_queue`` (keys waiting to be embedded, with
attempts, next attempt time, last error, and whether a write or a model change queued them),
``job_<id>_failed`` (keys given up on, with the reason), ``job_<id>_stamps`` (which model
and precision embedded each key, when, where (``embedded_by``: ``server``, or the Celery
worker that embedded it on its own sidecar) and how many times; during a model change, also
which did so into the shadow) and ``job_<id>_counts`` (the table's row count: a base row, id 0,
plus one delta row per INSERT or DELETE statement, written by a statement-level trigger in the
writer's transaction, so the sum is exact and concurrent writers never wait on each other;
``service`` folds the deltas into the base row), plus two trigger functions and six triggers
on the user's table.

The vectors go to the job's destination: a column of the table, or with chunking a chunk
table beside it (``key, chunk_no, chunk, embedding``). During a model change the new vectors
go to a shadow of the destination (a column, or a chunk table, named after it with
``__next``), which replaces it in one transaction once every row is embedded again: until
then the old vectors stay where queries find them. Every name is derived from
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
    def counts(self) -> sql.Identifier:
        return self._table("counts")

    @property
    def function(self) -> sql.Identifier:
        return self._table("on_write")

    @property
    def count_function(self) -> sql.Identifier:
        return self._table("count")

    def trigger(self, what: str) -> sql.Identifier:
        return sql.Identifier(f"embedding_job_{self.job_id}_{what}")


def table(job: EmbeddingJob) -> sql.Identifier:
    return sql.Identifier(job.schema_name, job.table_name)


SHADOW_SUFFIX = "__next"


def shadow_name(name: str) -> str:
    """The shadow of a destination column or chunk table, within PostgreSQL's 63 bytes."""
    room = 63 - len(SHADOW_SUFFIX.encode())
    return name.encode()[:room].decode(errors="ignore") + SHADOW_SUFFIX


@dataclass(frozen=True)
class Destination:
    """Where one model's vectors of a job go: a column of the job's table, or a chunk table."""

    table: sql.Identifier  # the table holding the vectors
    column: sql.Identifier  # their column there
    chunked: bool
    name: str  # the column's (or chunk table's) own name


def destination(job: EmbeddingJob, *, shadow: bool = False) -> Destination:
    if job.chunking:
        name = shadow_name(job.chunk_table) if shadow else job.chunk_table
        return Destination(
            sql.Identifier(job.schema_name, name),
            sql.Identifier(job.destination_column),
            True,
            name,
        )
    name = shadow_name(job.destination_column) if shadow else job.destination_column
    return Destination(table(job), sql.Identifier(name), False, name)


def index_name(job: EmbeddingJob) -> str:
    return f"embedding_job_{job.pk}_hnsw"


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


def text_expression(job: EmbeddingJob, *, prefix: str | None = None) -> sql.Composable:
    """The text a row is embedded from: the format (or the columns, one per line) with the
    input type's prefix (``prefix``: another one, "" for none). A row whose text columns are
    all NULL has NULL text, and so a NULL embedding; an empty text is the model's to refuse."""
    prefix = job.text_prefix if prefix is None else prefix
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
        return _prefixed(prefix, sql.SQL("{}::text").format(columns[0]))
    else:
        body = sql.SQL("concat_ws(E'\\n', {})").format(sql.SQL(", ").join(columns))
    guarded = sql.SQL("CASE WHEN num_nonnulls({}) = 0 THEN NULL ELSE {} END").format(
        sql.SQL(", ").join(columns), body
    )
    return _prefixed(prefix, guarded)


def _prefixed(prefix: str, expression: sql.Composable) -> sql.Composable:
    if not prefix:
        return expression
    return sql.SQL("({} || {})").format(sql.Literal(prefix), expression)


def create(conn: psycopg.Connection, job: EmbeddingJob) -> int:
    """Create the job's tables and triggers (and its chunk table) and queue every existing
    key (the backfill), in the caller's transaction; returns how many keys were queued.
    Creating the triggers locks out writers until the transaction ends, so no row is missed
    and none is queued twice."""
    n = Names(job.pk)
    key = sql.Identifier(job.key_column)
    key_type = sql.SQL(job.key_type)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
    conn.execute(
        sql.SQL(
            "CREATE TABLE {q} (id bigserial PRIMARY KEY, key {t} NOT NULL,"
            " attempts integer NOT NULL DEFAULT 0,"
            " next_attempt_at timestamptz NOT NULL DEFAULT now(),"
            " last_error text, queued_at timestamptz NOT NULL DEFAULT now(),"
            " reembed boolean NOT NULL DEFAULT false)"
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
            "CREATE TABLE {} (key {} PRIMARY KEY, model text, precision text,"
            " embedded_at timestamptz NOT NULL, embeddings integer NOT NULL DEFAULT 1,"
            " next_model text, next_precision text, embedded_by text)"
        ).format(n.stamps, key_type)
    )
    conn.execute(sql.SQL("CREATE INDEX ON {} (embedded_at)").format(n.stamps))  # the rate
    if job.chunking:
        create_chunk_table(conn, job, job.dimensions)
    write_trigger_function(conn, job, replace=False)
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
    create_counts(conn, job, cursor.rowcount)
    return cursor.rowcount


_PROVENANCE_CHECKED: set[tuple[str, int]] = set()  # (database, job id) seen with the column


def add_provenance(conn: psycopg.Connection, job: EmbeddingJob) -> None:
    """Give the stamps of a job created before they recorded who embedded each key (the
    server, or a worker's name) their ``embedded_by`` column; once per process and job."""
    seen = (job.database, job.pk)
    if seen in _PROVENANCE_CHECKED:
        return
    stamps = Names(job.pk).stamps.as_string(conn)
    with conn.transaction():
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = %s::regclass"
            " AND attname = 'embedded_by' AND NOT attisdropped)",
            [stamps],
        ).fetchone()
        if not (row and row[0]):
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS embedded_by text").format(
                    Names(job.pk).stamps
                )
            )
    _PROVENANCE_CHECKED.add(seen)


COUNT_TRIGGERS = ("count_insert", "count_delete", "count_truncate")


def create_counts(conn: psycopg.Connection, job: EmbeddingJob, rows: int) -> None:
    """Create the job's counts table with ``rows`` (the table's exact count, under a lock that
    keeps writers out) and the statement-level triggers that keep it, in the caller's
    transaction. Each INSERT or DELETE statement adds one delta row (its transition table's
    size), so writers never update a shared row, and TRUNCATE sets the count to 0."""
    n = Names(job.pk)
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigserial PRIMARY KEY, rows bigint NOT NULL,"
            " recounted_at timestamptz)"
        ).format(n.counts)
    )
    conn.execute(
        sql.SQL("INSERT INTO {} (id, rows, recounted_at) VALUES (0, %s, now())").format(n.counts),
        [rows],
    )
    body = sql.SQL(
        """
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    DELETE FROM {c} WHERE id <> 0;
    UPDATE {c} SET rows = 0 WHERE id = 0;
  ELSIF TG_OP = 'INSERT' THEN
    INSERT INTO {c} (rows) SELECT count(*) FROM new_rows HAVING count(*) > 0;
  ELSE
    INSERT INTO {c} (rows) SELECT -count(*) FROM old_rows HAVING count(*) > 0;
  END IF;
  RETURN NULL;
END
"""
    ).format(c=n.counts)
    conn.execute(
        sql.SQL(
            "CREATE FUNCTION {} () RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER"
            " SET search_path = pg_catalog, pg_temp AS {}"
        ).format(n.count_function, sql.Literal(body.as_string(conn)))
    )
    target = table(job)
    for what, event, referencing in (
        ("count_insert", "INSERT", "REFERENCING NEW TABLE AS new_rows"),
        ("count_delete", "DELETE", "REFERENCING OLD TABLE AS old_rows"),
        ("count_truncate", "TRUNCATE", ""),
    ):
        conn.execute(
            sql.SQL("CREATE TRIGGER {} AFTER {} ON {} {} FOR EACH STATEMENT EXECUTE FUNCTION {}()")
            .format(n.trigger(what), sql.SQL(event), target, sql.SQL(referencing),
                    n.count_function)
        )  # fmt: skip


def has_counts(conn: psycopg.Connection, job: EmbeddingJob) -> bool:
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", [Names(job.pk).counts.as_string(conn)]
    ).fetchone()
    return bool(row and row[0])


def add_counts(conn: psycopg.Connection, job: EmbeddingJob) -> bool:
    """For a job created before it had counts: count the table once, exactly, with writers
    kept out, and create its counts (in the caller's transaction). False if another session
    did so first."""
    conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(table(job)))
    if has_counts(conn, job):
        return False
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table(job))).fetchone()
    assert row is not None
    create_counts(conn, job, row[0])
    return True


def create_chunk_table(conn: psycopg.Connection, job: EmbeddingJob, dimensions: int, *,
                       shadow: bool = False) -> None:  # fmt: skip
    where = destination(job, shadow=shadow)
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (key {} NOT NULL, chunk_no integer NOT NULL, chunk text NOT NULL,"
            " {} vector({}), PRIMARY KEY (key, chunk_no))"
        ).format(where.table, sql.SQL(job.key_type), where.column, sql.Literal(dimensions))
    )


def write_trigger_function(
    conn: psycopg.Connection, job: EmbeddingJob, *, replace: bool, shadow: bool = False
) -> None:
    """(Re)write the trigger function for the job's destinations: with ``shadow`` (while the
    model changes), deletes and TRUNCATE clear the shadow chunk table too."""
    n = Names(job.pk)
    key = sql.Identifier(job.key_column)
    chunk_tables = []
    if job.chunking:
        chunk_tables.append(destination(job).table)
        if shadow:
            chunk_tables.append(destination(job, shadow=True).table)
    clear = sql.SQL(" ").join(sql.SQL("DELETE FROM {};").format(c) for c in chunk_tables)
    forget = sql.SQL(" ").join(
        sql.SQL("DELETE FROM {} WHERE key = OLD.{};").format(c, key) for c in chunk_tables
    )
    # A pending entry that no worker holds is reused (and locked until this write commits,
    # so no worker reads the text before it); one a worker holds is left to it, and a new
    # entry follows, so the change is embedded after that batch. Writers never wait on a
    # worker, and workers skip rows writers hold: no deadlock either way. A write makes the
    # entry a write's: during a model change, a write is embedded with both models.
    body = sql.SQL(
        """
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    DELETE FROM {q}; DELETE FROM {f}; DELETE FROM {s}; {clear}
  ELSIF TG_OP = 'DELETE' THEN
    DELETE FROM {q} WHERE key = OLD.{k};
    DELETE FROM {f} WHERE key = OLD.{k};
    DELETE FROM {s} WHERE key = OLD.{k};
    {forget}
  ELSE
    UPDATE {q} SET attempts = 0, next_attempt_at = now(), last_error = NULL, reembed = false
     WHERE id = (SELECT id FROM {q} WHERE key = NEW.{k} LIMIT 1 FOR UPDATE SKIP LOCKED);
    IF NOT FOUND THEN
      INSERT INTO {q} (key) VALUES (NEW.{k});
    END IF;
  END IF;
  RETURN NULL;
END
"""
    ).format(q=n.queue, f=n.failed, s=n.stamps, k=key, clear=clear, forget=forget)
    conn.execute(
        sql.SQL(
            "CREATE {} FUNCTION {} () RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER"
            " SET search_path = pg_catalog, pg_temp AS {}"
        ).format(
            sql.SQL("OR REPLACE") if replace else sql.SQL(""),
            n.function,
            sql.Literal(body.as_string(conn)),
        )
    )


def drop(conn: psycopg.Connection, job: EmbeddingJob, *, drop_column: bool = False) -> None:
    """Remove the job's triggers, tables and shadow (and with ``drop_column``, its vectors:
    the destination column, or the chunk table)."""
    n = Names(job.pk)
    target = table(job)
    # The user's table first, as a batch takes it: a batch in flight ends before, and the next
    # one waits and then finds the queue gone.
    conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(target))
    for what in ("write", "update", "truncate", *COUNT_TRIGGERS):
        conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(n.trigger(what), target))
    conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {} ()").format(n.function))
    conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {} ()").format(n.count_function))
    for name in (n.queue, n.failed, n.stamps, n.counts):
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))
    drop_destination(conn, job, shadow=True)
    if drop_column:
        drop_destination(conn, job)


def drop_destination(conn: psycopg.Connection, job: EmbeddingJob, *, shadow: bool = False) -> None:
    where = destination(job, shadow=shadow)
    if where.chunked:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(where.table))
    else:
        conn.execute(
            sql.SQL("ALTER TABLE {} DROP COLUMN IF EXISTS {}").format(where.table, where.column)
        )


def exists(conn: psycopg.Connection, where: Destination) -> bool:
    """Whether a destination (a column, or a chunk table) is there."""
    relation = where.table.as_string(conn)
    if where.chunked:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [relation]).fetchone()
    else:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s)"
            " AND attname = %s AND NOT attisdropped)",
            [relation, where.name],
        ).fetchone()
    return bool(row and row[0])


def start_model_change(conn: psycopg.Connection, job: EmbeddingJob, dimensions: int) -> int:
    """In the caller's transaction: create the shadow destination for vectors of
    ``dimensions``, make deletes reach it, and queue every key to be embedded again; returns
    how many. The current vectors stay as they are."""
    n = Names(job.pk)
    # As at the end of a change: batches in flight finish first, and later ones see the
    # shadow (``run_batch`` checks the job's record against it under its own table lock).
    conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(table(job)))
    drop_destination(conn, job, shadow=True)  # what an interrupted change may have left
    shadow = destination(job, shadow=True)
    if shadow.chunked:
        create_chunk_table(conn, job, dimensions, shadow=True)
    else:
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN {} vector({})").format(
                shadow.table, shadow.column, sql.Literal(dimensions)
            )
        )
    write_trigger_function(conn, job, replace=True, shadow=True)
    conn.execute(sql.SQL("UPDATE {} SET next_model = NULL, next_precision = NULL").format(n.stamps))
    conn.execute(sql.SQL("UPDATE {} SET reembed = false").format(n.queue))
    return conn.execute(
        sql.SQL("INSERT INTO {} (key, reembed) SELECT {}, true FROM {} ORDER BY 1").format(
            n.queue, sql.Identifier(job.key_column), table(job)
        )
    ).rowcount


def finish_model_change(conn: psycopg.Connection, job: EmbeddingJob) -> bool:
    """In the caller's transaction, once the queue is empty: the shadow replaces the
    destination (its index goes with it), the stamps' next model becomes theirs, and deletes
    forget the shadow. False (nothing done) if writes queued keys meanwhile."""
    n = Names(job.pk)
    current, shadow = destination(job), destination(job, shadow=True)
    # Writers wait from here to the commit, so no key is queued between the check and the swap.
    conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(table(job)))
    waiting = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(n.queue)).fetchone()
    if waiting and waiting[0]:
        return False
    drop_destination(conn, job)
    if current.chunked:
        conn.execute(
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                shadow.table, sql.Identifier(current.name)
            )
        )
    else:
        conn.execute(
            sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(
                current.table, shadow.column, current.column
            )
        )
    conn.execute(
        sql.SQL(
            "UPDATE {} SET model = next_model, precision = next_precision,"
            " next_model = NULL, next_precision = NULL"
        ).format(n.stamps)
    )
    write_trigger_function(conn, job, replace=True, shadow=False)
    return True


def act_as_owner(conn: psycopg.Connection, job: EmbeddingJob) -> None:
    """For the rest of the caller's transaction, act as the owner of the job's table, so
    that its triggers, the functions they call and its row security run with the owner's
    rights, as for any write of the owner's, and never with the console's superuser ones.
    Grants the owner what a batch touches of the job's tables first, where it lacks it (the
    table may have changed hands)."""
    row = conn.execute(
        "SELECT r.rolname, r.rolsuper FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_roles r ON r.oid = c.relowner WHERE c.oid = %s::regclass",
        [table(job).as_string(conn)],
    ).fetchone()
    if row is None or row[1]:
        return
    owner = sql.Identifier(row[0])
    n = Names(job.pk)
    touched = [n.queue, n.failed, n.stamps]
    if job.chunking:
        touched.append(destination(job).table)
        if job.next_model_uri:
            touched.append(destination(job, shadow=True).table)
    # has_table_privilege with several privileges is true if any is held: ask for each.
    granted = conn.execute(
        "SELECT bool_and(pg_catalog.has_table_privilege(%s, t, p))"
        " FROM unnest(%s::text[]) AS t,"
        " unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) AS p",
        [row[0], [name.as_string(conn) for name in touched]],
    ).fetchone()
    if not (granted and granted[0]):
        conn.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(SCHEMA), owner)
        )
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {} TO {}").format(
                sql.SQL(", ").join(touched), owner
            )
        )
    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(owner))


def queue_empty(conn: psycopg.Connection, job: EmbeddingJob) -> bool:
    row = conn.execute(
        sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})").format(Names(job.pk).queue)
    ).fetchone()
    return bool(row and row[0])


def build_index(conn: psycopg.Connection, job: EmbeddingJob) -> None:
    """Build the HNSW (cosine) index on the destination's vectors without blocking writes;
    ``conn`` must be in autocommit. An invalid index a failed build left is dropped first."""
    name = index_name(job)
    where = destination(job)
    qualified = sql.Identifier(job.schema_name, name)
    row = conn.execute(
        "SELECT NOT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)",
        [qualified.as_string(conn)],
    ).fetchone()
    if row and row[0]:
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(qualified))
    conn.execute(
        sql.SQL(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} USING hnsw ({} vector_cosine_ops)"
        ).format(sql.Identifier(name), where.table, where.column)
    )
