"""Embedding jobs against the engine's bulk throughput, on the real model, in one run.

Starts a system of its own under ``VAR_DIR/bench/jobs`` (a managed server on a free port with
vector and azure_local_ai allowed, the inference sidecar serving all-MiniLM-L6-v2:v1 in fp32,
Celery workers on a queue of their own, a console database), then measures:

1. **bulk references** on the first texts of the table (at most 10,000): the sidecar's
   ``/v1/embeddings`` with 1,000 texts a request; ``create_embeddings(uri, texts[])`` in one
   statement; and the same SQL in one statement per job batch (the job's batch size);
2. **backfill, one worker**: a table of ``--rows`` short rows (at most 16 words), a job created
   with ``console.jobs.service.create``, rows per second from the job's creation to its last
   embedding, and the share of the bulk reference; then the exactly-once check: no NULL
   vector, every key stamped exactly once, the job's counter equal to the rows, and a sample
   of vectors against ``create_embeddings`` of the same text (min cosine);
3. **insert-to-embedding delay** with that job in sync: ``--insert-rate`` single-row INSERTs a
   second for ``--insert-seconds`` from a connection of their own; each row's delay runs from
   its ``inserted_at`` (``DEFAULT clock_timestamp()``, committed at once) to its stamp's
   ``embedded_at`` (written in the batch's transaction, just before it commits);
4. **backfill, two workers** (skip with ``--skip-two-workers``): the same on a second table,
   with a second worker process and the job's ``workers=2``. The first job is deleted before,
   so that its idle runner takes no turns on the workers.

For every phase it also says where the time went: the CPU seconds of the sidecar, PostgreSQL,
the workers, the benchmark itself and the machine's other processes (which slow whatever they
overlap), and the sidecar's model runs (how many, texts per run, padding, and the share of the
wall time the model was running: what is left is time the engine waited for work).

Usage: ``.venv/bin/python bench/jobs.py [--rows N] [--insert-rate R] [--insert-seconds S]
[--skip-two-workers] [--batch-size N]``. Prints a table and writes ``VAR_DIR/bench/jobs.json``.
Its jobs and tables are deleted and its processes stopped at the end, also after a failure,
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from psycopg import sql

from bench.corpus import make_texts
from bench.embeddings import MODEL_URI, http_bulk
from bench.sql import deployed_model
from bench.system import System, bench_system, machine
from inference.config import var_dir

DATABASE = "bench_jobs"
MAX_WORDS = 16
REFERENCE_TEXTS = 10_000
HTTP_PER_REQUEST = 1_000
SQL_ARRAY_BATCH = 1_000  # create_embeddings' batch_size: texts per request to the sidecar
SAMPLE = 500  # vectors compared with create_embeddings of their text
TARGET_SHARE = 0.8  # of the bulk reference
NOISY_SHARE = 0.1  # other processes' share of the busy CPU past which a phase is skewed
POLL_S = 0.5
REPORT_EVERY_S = 15.0
BACKFILLS = {"one_worker": "1 worker", "two_workers": "2 workers"}  # report keys
STALL_S = 120.0  # no embedding written for this long: the job is stuck, stop


class Bench:
    """The benchmark's database on the system, and what it created there (dropped by
    ``clean_up``)."""

    def __init__(self, system: System, uri: str) -> None:
        self.system = system
        self.uri = uri
        self.jobs: list[Any] = []
        self.tables: list[str] = []

    def connect(self) -> Any:
        return self.system.server.connect(DATABASE)

    def prepare(self, stored_path: Path) -> None:
        """The model registered (so loaded) in the sidecar, the extensions allowed, and a
        database of the benchmark's own."""
        self.system.sidecar.client.register(self.uri, str(stored_path))
        with self.system.server.connect() as conn:
            conn.execute("ALTER SYSTEM SET azure.extensions = 'vector,azure_local_ai'")
            conn.execute("SELECT pg_reload_conf()")
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        with self.connect() as conn:
            conn.execute("CREATE EXTENSION vector")
            conn.execute("CREATE EXTENSION azure_local_ai")

    def table(self, name: str, texts: list[str]) -> None:
        """A table of ``texts`` keyed 1..n, each row stamped with when it was inserted."""
        self.tables.append(name)
        table = sql.Identifier(name)
        create = sql.SQL(
            "CREATE TABLE {} (id bigint PRIMARY KEY, body text NOT NULL,"
            " inserted_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        with self.connect() as conn:
            conn.execute(create.format(table))
            copy = sql.SQL("COPY {} (id, body) FROM STDIN").format(table)
            with conn.cursor().copy(copy) as writer:
                for key, text in enumerate(texts, start=1):
                    writer.write_row((key, text))
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(table))

    def clock(self) -> datetime:
        with self.connect() as conn:
            return conn.execute("SELECT clock_timestamp()").fetchone()[0]

    def drop(self, job: Any, table: str) -> None:
        """Delete ``job`` and drop its table."""
        from console.jobs import service
        from console.jobs.models import EmbeddingJob

        job.refresh_from_db()
        if job.state == EmbeddingJob.State.ACTIVE:
            service.pause(job)  # its runner ends at its next batch, before the tables go
        if job.state != EmbeddingJob.State.DELETED:
            service.delete(job)
        with self.connect() as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
        self.tables.remove(table)

    def clean_up(self) -> None:
        """Pause the jobs (their runners end at once), delete them, drop the tables."""
        from console.jobs import service
        from console.jobs.models import EmbeddingJob

        pks = [job.pk for job in self.jobs]
        EmbeddingJob.objects.filter(pk__in=pks).exclude(state=EmbeddingJob.State.DELETED).update(
            state=EmbeddingJob.State.PAUSED
        )
        for job in EmbeddingJob.objects.filter(pk__in=pks).exclude(
            state=EmbeddingJob.State.DELETED
        ):
            with contextlib.suppress(service.JobError):
                service.delete(job)
        with contextlib.suppress(Exception), self.connect() as conn:
            for name in self.tables:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
        self.tables.clear()


# -- 1. bulk references --------------------------------------------------------------------


def references(bench: Bench, texts: list[str], batch_size: int) -> dict[str, Any]:
    """Texts per second of the engine in bulk: over HTTP, and through SQL in one big array
    call and in one call per job batch."""
    sample = texts[:REFERENCE_TEXTS]
    warm = sample[:500]
    http_bulk(bench.system.sidecar.url, warm, per_request=HTTP_PER_REQUEST)
    before = usage(bench.system)
    start = time.perf_counter()
    http_bulk(bench.system.sidecar.url, sample, per_request=HTTP_PER_REQUEST)
    http_s = time.perf_counter() - start
    http = {"texts_per_s": len(sample) / http_s, **usage_since(bench.system, before, http_s)}

    array = "SELECT count(*) FROM azure_local_ai.create_embeddings(%s, %s::text[], %s)"
    with bench.connect() as conn:
        conn.execute(array, [bench.uri, warm, SQL_ARRAY_BATCH])
        before = usage(bench.system)
        start = time.perf_counter()
        (rows,) = conn.execute(array, [bench.uri, sample, SQL_ARRAY_BATCH]).fetchone()
        sql_s = time.perf_counter() - start
        sql_array = {"texts_per_s": len(sample) / sql_s, **usage_since(bench.system, before, sql_s)}
        assert rows == len(sample), rows
        before = usage(bench.system)
        start = time.perf_counter()
        for i in range(0, len(sample), batch_size):
            conn.execute(array, [bench.uri, sample[i : i + batch_size], batch_size]).fetchone()
        batches_s = time.perf_counter() - start
        per_batch = {
            "batch_size": batch_size,
            "texts_per_s": len(sample) / batches_s,
            **usage_since(bench.system, before, batches_s),
        }
    return {"texts": len(sample), "http": http, "sql_array": sql_array, "sql_per_batch": per_batch}


def usage(system: System) -> dict[str, dict[str, float]]:
    return {"cpu": system.cpu_seconds(), "engine": system.engine_counters()}


def usage_since(
    system: System, before: dict[str, dict[str, float]], wall_s: float
) -> dict[str, dict[str, float]]:
    """Where the time went since ``before``: the CPU seconds of each part and of the machine's
    other processes (anything else running skews the figures; this says by how much), and the
    sidecar's model runs (how full, how padded, how much of the wall time the model ran)."""
    after = usage(system)
    cpu = {part: after["cpu"][part] - before["cpu"][part] for part in after["cpu"]}
    ours = sum(v for part, v in cpu.items() if part != "machine")
    cpu["others"] = max(0.0, cpu.pop("machine") - ours)
    cpu["wall"] = wall_s
    runs = {k: after["engine"][k] - before["engine"][k] for k in after["engine"]}
    engine = {
        "runs": runs["runs"],
        "texts_per_run": runs["texts"] / max(1.0, runs["runs"]),
        "padded_per_token": runs["padded_tokens"] / max(1.0, runs["tokens"]),
        "model_s": runs["run_s"],
        "model_share_of_wall": runs["run_s"] / wall_s,
        "texts_per_model_s": runs["texts"] / max(1e-9, runs["run_s"]),
    }
    return {
        "cpu_s": {part: round(v, 2) for part, v in cpu.items()},
        "engine": {k: round(v, 3) for k, v in engine.items()},
    }


# -- 2. and 4. backfills -------------------------------------------------------------------


def backfill(
    bench: Bench,
    table: str,
    texts: list[str],
    *,
    workers: int,
    batch_size: int | None,
    embed_on: str = "server",
) -> tuple[Any, dict[str, Any]]:
    """Create a job on a fresh table of ``texts`` and wait until it is in sync; ``embed_on``:
    where its texts are embedded (``server`` or ``worker``)."""
    from console.jobs import service

    bench.table(table, texts)
    tuning: dict[str, Any] = {"workers": workers, "embed_on": embed_on}
    if batch_size:
        tuning["batch_size"] = batch_size
    started_at = bench.clock()
    before = usage(bench.system)
    start = time.perf_counter()
    job = service.create(
        database=DATABASE,
        table=table,
        key="id",
        columns=["body"],
        model_uri=bench.uri,
        column="embedding",
        **tuning,
    )
    bench.jobs.append(job)
    created_s = time.perf_counter() - start
    print(f"  job #{job.pk} on {table}: {job.backfill_rows} rows queued in {created_s:.1f} s")
    wait_in_sync(bench, job)
    wall_s = time.perf_counter() - start
    used = usage_since(bench.system, before, wall_s)
    with bench.connect() as conn:
        first, last = conn.execute(
            sql.SQL("SELECT min(embedded_at), max(embedded_at) FROM {}").format(stamps(job))
        ).fetchone()
    seconds = (last - started_at).total_seconds()
    job.refresh_from_db()
    return job, {
        "rows": len(texts),
        "workers": workers,
        "embed_on": embed_on,
        "batch_size": job.batch_size,
        "create_s": round(created_s, 2),
        "to_first_embedding_s": round((first - started_at).total_seconds(), 2),
        "to_last_embedding_s": round(seconds, 2),
        "to_in_sync_seen_s": round(wall_s, 2),
        "rows_per_s": len(texts) / seconds,
        "batches": sum(r.batches for r in job.runners.all()),
        **used,
    }


def stamps(job: Any) -> sql.Composable:
    from console.jobs import objects

    return objects.Names(job.pk).stamps


def wait_in_sync(bench: Bench, job: Any) -> None:
    """Poll until the queue is empty and every row is done (the cheap look at the queue first,
    the job's exact progress then); report now and then; fail if nothing moves."""
    from console.jobs import objects, service

    queue = objects.Names(job.pk).queue
    empty = sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})").format(queue)
    reported = moved = time.monotonic()
    done = -1
    with bench.connect() as conn:
        while True:
            now = time.monotonic()
            if conn.execute(empty).fetchone()[0] or now - reported >= REPORT_EVERY_S:
                progress = service.progress(job)
                if progress.pending == 0 and progress.done == progress.total:
                    return
                if progress.failed:
                    raise SystemExit(f"job #{job.pk}: {progress.failed} rows failed")
                if progress.done != done:
                    done, moved = progress.done, now
                if now - reported >= REPORT_EVERY_S:
                    reported = now
                    print(
                        f"    {progress.done}/{progress.total} embedded, "
                        f"{progress.rows_per_s:.0f} rows/s",
                        flush=True,
                    )
                if now - moved > STALL_S:
                    job.refresh_from_db()
                    logs = "\n".join(w.log_tail(20) for w in bench.system.workers)
                    raise SystemExit(
                        f"job #{job.pk} wrote nothing for {STALL_S:g} s "
                        f"(last error: {job.last_error or 'none'}); workers' logs:\n{logs}"
                    )
            time.sleep(POLL_S)


def exactly_once(bench: Bench, job: Any, table: str, rows: int) -> dict[str, Any]:
    """Every row has a vector, was embedded exactly once, and a sample of vectors equals
    ``create_embeddings`` of the row's text."""
    from console.jobs import objects

    t = sql.Identifier(table)
    with bench.connect() as conn:
        total, nulls, stamped, once, most = conn.execute(
            sql.SQL(
                "SELECT count(*), count(*) FILTER (WHERE t.embedding IS NULL), count(s.key),"
                " count(*) FILTER (WHERE s.embeddings = 1), coalesce(max(s.embeddings), 0)"
                " FROM {t} AS t LEFT JOIN {s} AS s ON s.key = t.id"
            ).format(t=t, s=stamps(job))
        ).fetchone()
        strays = conn.execute(
            sql.SQL(
                "SELECT count(*) FROM {s} AS s"
                " WHERE NOT EXISTS (SELECT 1 FROM {t} WHERE id = s.key)"
            ).format(s=stamps(job), t=t)
        ).fetchone()[0]
        keys = sorted(random.Random(rows).sample(range(1, rows + 1), min(SAMPLE, rows)))
        compared, min_cos = conn.execute(
            sql.SQL(
                "WITH sample AS (SELECT id, {text} AS text FROM {t} WHERE id = ANY(%s)),"
                " reference AS (SELECT * FROM azure_local_ai.create_embeddings(%s,"
                "   (SELECT array_agg(text ORDER BY id) FROM sample),"
                "   (SELECT array_agg(id ORDER BY id) FROM sample)))"
                " SELECT count(*), min(1 - (t.embedding <=> r.embedding::vector))"
                " FROM reference AS r JOIN {t} AS t USING (id)"
            ).format(text=objects.text_expression(job), t=t),
            [keys, bench.uri],
        ).fetchone()
    job.refresh_from_db()
    result = {
        "rows": total,
        "null_vectors": nulls,
        "stamped": stamped,
        "stamped_once": once,
        "max_embeddings": most,
        "stamps_without_row": strays,
        "job_embedded_rows": job.embedded_rows,
        "sample": compared,
        "sample_min_cos": round(float(min_cos), 6),
    }
    result["ok"] = (
        total == rows
        and nulls == 0
        and once == rows
        and most == 1
        and strays == 0
        and job.embedded_rows == rows
        and compared == len(keys)
        and min_cos >= 0.9999
    )
    return result


def own_cpu_per_row(phase: dict[str, Any], rows_per_s: float) -> float:
    """The benchmark's own processes' CPU seconds per row (others' left out)."""
    cpu = phase["cpu_s"]
    own = cpu["sidecar"] + cpu["postgres"] + cpu["workers"] + cpu["benchmark"]
    return own / (rows_per_s * cpu["wall"])


def others_share(phase: dict[str, Any]) -> float:
    """The share of the machine's busy CPU time that processes outside the benchmark took."""
    cpu = phase["cpu_s"]
    busy = sum(v for part, v in cpu.items() if part != "wall")
    return cpu["others"] / busy if busy else 0.0


def shares(backfill: dict[str, Any], report: dict[str, Any]) -> dict[str, float]:
    """A backfill's rate as a share of bulk, and the same by CPU per row (against the bulk
    reference that spent the least): the second barely moves when other processes compete."""
    ref = report["reference"]
    cheapest = min(own_cpu_per_row(ref[k], ref[k]["texts_per_s"]) for k in ("http", "sql_array"))
    return {
        "share_of_bulk": round(backfill["rows_per_s"] / report["bulk_texts_per_s"], 3),
        "share_of_bulk_by_cpu": round(
            cheapest / own_cpu_per_row(backfill, backfill["rows_per_s"]), 3
        ),
    }


# -- 3. insert-to-embedding delay ------------------------------------------------------------


def insert_delay(
    bench: Bench, job: Any, table: str, first_key: int, rate: float, seconds: float
) -> dict[str, Any]:
    """Single-row INSERTs at a steady rate into a table whose job is in sync; each row's delay
    from its insert to its embedding."""
    count = max(1, round(rate * seconds))
    texts = make_texts(count, seed=4321, max_words=MAX_WORDS)
    insert = sql.SQL("INSERT INTO {} (id, body) VALUES (%s, %s)").format(sql.Identifier(table))
    late = 0.0
    before = usage(bench.system)
    with bench.connect() as conn:  # autocommit: each INSERT commits at once
        start = time.perf_counter()
        for i, text in enumerate(texts):
            due = start + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            else:
                late = max(late, -wait)
            conn.execute(insert, [first_key + i, text])
        insert_s = time.perf_counter() - start
    wait_in_sync(bench, job)
    used = usage_since(bench.system, before, time.perf_counter() - start)
    with bench.connect() as conn:
        delays = [
            row[0]
            for row in conn.execute(
                sql.SQL(
                    "SELECT extract(epoch FROM s.embedded_at - t.inserted_at)::float8"
                    " FROM {t} AS t JOIN {s} AS s ON s.key = t.id WHERE t.id >= %s"
                ).format(t=sql.Identifier(table), s=stamps(job)),
                [first_key],
            )
        ]
    assert len(delays) == count, (len(delays), count)
    ordered = sorted(delays)
    return {
        "rows": count,
        "rate_per_s": rate,
        "achieved_rate_per_s": round(count / insert_s, 2),
        "most_late_ms": round(late * 1000, 1),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(ordered[min(count - 1, round(0.95 * (count - 1)))] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        **used,
    }


# -- the run ---------------------------------------------------------------------------------


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the clean-up like Ctrl-C


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows of each backfill table")
    parser.add_argument("--insert-rate", type=float, default=20.0, help="INSERTs a second")
    parser.add_argument("--insert-seconds", type=float, default=30.0)
    parser.add_argument("--skip-two-workers", action="store_true")
    parser.add_argument("--batch-size", type=int, help="the jobs' batch size (default: a job's)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)

    stored = deployed_model(MODEL_URI)  # in the model store of VAR_DIR, before it moves
    texts = make_texts(args.rows, max_words=MAX_WORDS)
    out = var_dir() / "bench" / "jobs.json"
    report: dict[str, Any] = {
        "model": f"{MODEL_URI} fp32",
        "machine": machine(),
        "rows": args.rows,
        "max_words": MAX_WORDS,
    }
    with bench_system("jobs") as system:
        from console.jobs.models import EmbeddingJob

        bench = Bench(system, MODEL_URI)
        try:
            bench.prepare(stored.path)
            batch_size = args.batch_size or EmbeddingJob._meta.get_field("batch_size").default
            print("bulk references ...", flush=True)
            report["reference"] = references(bench, texts, batch_size)
            # The fastest way the engine embeds these texts in bulk.
            bulk = max(report["reference"][k]["texts_per_s"] for k in ("http", "sql_array"))
            report["bulk_texts_per_s"] = bulk

            print("backfill, one worker ...", flush=True)
            system.start_worker()
            job, one = backfill(bench, "bench_one", texts, workers=1, batch_size=args.batch_size)
            one.update(shares(one, report))
            one["exactly_once"] = exactly_once(bench, job, "bench_one", args.rows)
            report["one_worker"] = one

            print(
                f"insert-to-embedding delay, {args.insert_rate:g} rows/s for "
                f"{args.insert_seconds:g} s ...",
                flush=True,
            )
            report["delay"] = insert_delay(
                bench, job, "bench_one", args.rows + 1, args.insert_rate, args.insert_seconds
            )
            bench.drop(job, "bench_one")

            if not args.skip_two_workers:
                print("backfill, two workers ...", flush=True)
                system.start_worker()
                job, two = backfill(
                    bench, "bench_two", texts, workers=2, batch_size=args.batch_size
                )
                two.update(shares(two, report))
                two["exactly_once"] = exactly_once(bench, job, "bench_two", args.rows)
                report["two_workers"] = two
        finally:
            bench.clean_up()

    print_report(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {out}")
    checks = [report[k]["exactly_once"]["ok"] for k in BACKFILLS if k in report]
    return 0 if all(checks) else 1


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    ref = report["reference"]
    bulk = report["bulk_texts_per_s"]
    print(
        f"\nembedding jobs, {report['model']}, {report['rows']} rows of at most "
        f"{report['max_words']} words, on {m['cpu']} ({m['cores']} cores)\n"
    )
    phases = [
        (f"bulk: sidecar HTTP, {HTTP_PER_REQUEST} texts a request", ref["http"]),
        (f"bulk: SQL create_embeddings(texts[]), {ref['texts']} a call", ref["sql_array"]),
        (
            f"SQL create_embeddings(texts[]), {ref['sql_per_batch']['batch_size']} a call",
            ref["sql_per_batch"],
        ),
    ]
    for key, label in (
        ("one_worker", "backfill, 1 worker"),
        ("two_workers", "backfill, 2 workers"),
    ):
        if key in report:
            phases.append((label, {"texts_per_s": report[key]["rows_per_s"], **report[key]}))
    parts = ("sidecar", "postgres", "workers", "benchmark", "others")
    width = max(len(label) for label, _ in phases) + 2
    print(f"{'':<{width + 16}}CPU seconds per 1000 rows, by process")
    print(f"{'measure':<{width}}{'rows/s':>8}{'of bulk':>8}" + "".join(f"{p:>10}" for p in parts))
    for label, phase in phases:
        rate = phase["texts_per_s"]
        per_1000 = 1000 / (rate * phase["cpu_s"]["wall"])
        cpu = "".join(f"{phase['cpu_s'][p] * per_1000:>10.2f}" for p in parts)
        print(f"{label:<{width}}{rate:>8.0f}{rate / bulk:>8.0%}{cpu}")
    print(
        f"\n{'the sidecar model runs of each':<{width}}{'runs':>8}{'texts/run':>10}"
        f"{'padded/real':>12}{'model busy':>11}{'texts/model-s':>14}"
    )
    for label, phase in phases:
        e = phase["engine"]
        print(
            f"{label:<{width}}{e['runs']:>8.0f}{e['texts_per_run']:>10.1f}"
            f"{e['padded_per_token']:>12.2f}{e['model_share_of_wall']:>11.0%}"
            f"{e['texts_per_model_s']:>14.0f}"
        )
    print(
        f"(references over the first {ref['texts']} texts; bulk: the faster of the two bulk "
        f"references; target: a backfill at {TARGET_SHARE:.0%} of bulk or more; others: "
        "processes outside the benchmark, which slow every figure they overlap)"
    )
    noisy = {
        label: share for label, phase in phases if (share := others_share(phase)) > NOISY_SHARE
    }
    if noisy:
        listed = ", ".join(f"{label} {share:.0%}" for label, share in noisy.items())
        print(
            f"\n! other processes took a large share of the busy CPU during: {listed}. Those "
            "figures are slowed and the ratios between them skewed: run again on a quiet machine."
        )
    for key, label in BACKFILLS.items():
        if key not in report:
            continue
        r, e = report[key], report[key]["exactly_once"]
        print(
            f"\n{label}: job created (rows queued) in {r['create_s']} s, first embedding after "
            f"{r['to_first_embedding_s']} s, last after {r['to_last_embedding_s']} s, "
            f"{r['batches']} batches of {r['batch_size']}; {r['share_of_bulk']:.0%} of bulk, "
            f"{r['share_of_bulk_by_cpu']:.0%} by CPU per row"
        )
        print(
            f"  exactly once: {'yes' if e['ok'] else 'NO'}: {e['stamped_once']}/{e['rows']} "
            f"rows stamped once (most {e['max_embeddings']}), {e['null_vectors']} NULL vectors, "
            f"{e['stamps_without_row']} stray stamps, job counter {e['job_embedded_rows']}; "
            f"{e['sample']} sampled vectors vs create_embeddings: min cos {e['sample_min_cos']}"
        )
    d = report["delay"]
    print(
        f"\ninsert-to-embedding delay, {d['rows']} single-row INSERTs at {d['rate_per_s']:g}/s "
        f"(achieved {d['achieved_rate_per_s']}/s): p50 {d['p50_ms']} ms, p95 {d['p95_ms']} ms, "
        f"max {d['max_ms']} ms"
    )


if __name__ == "__main__":
    sys.exit(main())
