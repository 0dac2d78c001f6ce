"""Embedding jobs on worker machines against on the server: does a backfill scale with them?

Starts a system of its own under ``VAR_DIR/bench/scaleout`` as bench/jobs.py does (a managed
server with vector and azure_local_ai allowed, the server's sidecar serving all-MiniLM-L6-v2:v1
in fp32, a console database, Celery workers on a queue of their own). A **worker host** stands
for a worker machine of one core: a Celery worker (``--concurrency 1``) and a sidecar of its
own (one session of one thread), both pinned to one core from birth (every thread and pool
process inherits it), the worker's ``WORKER_INFERENCE_URL`` pointing at its sidecar, which
is warmed up first: the model registered from the server's files and loaded as a worker's first
batch does it, then a first run. Host A runs on the first core this process may use, host B on
the second. Then it measures, each backfill a job created with
``console.jobs.service.create`` on a fresh table of ``--rows`` short rows (at most 16 words):

1. **backfill rows/s** (from the job's creation to its last embedding) in three modes:
   *1 worker host* (``embed_on="worker"``, the job's ``workers=1``), *2 worker hosts* (the
   same with hosts A and B, ``workers=2``; the target: 1.8 times the rate of one host or
   more), and *on the server* (``embed_on="server"``: the extension embeds through the
   server's sidecar, as it is, unpinned; one worker process, unpinned, of the production
   concurrency, ``workers=2``; the hosts stopped);
2. **the server's CPU seconds per 1,000 rows** in each mode: PostgreSQL's processes and the
   server's sidecar (embedding on the workers, what is left is the cost of writing: the
   server's sidecar should be near zero), beside those of the workers, the hosts' sidecars,
   the benchmark and the machine's other processes (which slow whatever they overlap);
3. **insert-to-vector delay** p50/p95 with the 2-host job and with the server's job in sync:
   ``--insert-rate`` single-row INSERTs a second for ``--insert-seconds`` (bench/jobs.py's);
4. after each backfill, the **exactly-once check** of bench/jobs.py (sampled vectors against
   ``create_embeddings`` on the server included) and which host embedded how many rows (the
   stamps' ``embedded_by``): on 2 hosts both should have embedded a share.

The machine's cores are shared: PostgreSQL and the benchmark itself run unpinned beside the
hosts, so on a 2-core machine the hosts never have a core to themselves; the CPU columns say
how much the others took, and the hosts' share of busy time how much of its core a host had.

Usage: ``.venv/bin/python bench/scaleout.py [--rows N] [--insert-rate R] [--insert-seconds S]
[--batch-size N]``. Prints a table and writes ``VAR_DIR/bench/scaleout.json``. Its jobs and
tables are deleted and its processes stopped at the end, also after a failure, Ctrl-C or
SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from psycopg import sql

from bench.corpus import make_texts
from bench.embeddings import MODEL_URI
from bench.jobs import (
    MAX_WORDS,
    NOISY_SHARE,
    Bench,
    _terminate,
    backfill,
    exactly_once,
    insert_delay,
    others_share,
    stamps,
)
from bench.sql import deployed_model
from bench.system import affinity, bench_system, machine
from console.workers import CONCURRENCY
from inference.config import var_dir
from inference.process import ChildProcess, SidecarProcess

# A sidecar of one core: one ONNX Runtime session of one intra-op thread.
HOST_SETTINGS = {"engine_sessions": 1, "intra_op_parallelism": 1}
TARGET_RATIO = 1.8  # two hosts against one
SERVER_WORKERS = 2  # the server mode's job slots
WARM_TEXTS = 64  # a host's sidecar embeds these before its first backfill
MODES = {"one_host": "1 worker host", "two_hosts": "2 worker hosts", "server": "on the server"}
# The parts of System.cpu_seconds, and their headings.
CPU_PARTS = {
    "postgres": "postgres",
    "sidecar": "sidecar",
    "workers": "workers",
    "worker_sidecars": "w.sidecars",
    "benchmark": "benchmark",
    "others": "others",
}


@dataclass
class Host:
    """A worker machine of one core: a Celery worker and its own sidecar on ``core``."""

    name: str
    core: int
    node: str  # the worker's node name, less its @host: the stamps' ``embedded_by``
    sidecar: SidecarProcess
    worker: ChildProcess

    def describe(self) -> dict[str, Any]:
        """Where it runs (the cores its processes' threads may use) and how its sidecar lays
        out the model."""
        cores = affinity(self.worker.pid) | affinity(self.sidecar.process.pid)
        return {
            "name": self.name,
            "core": self.core,
            "affinity": sorted(cores),
            "sidecar_layout": self.sidecar.client.health()["layout"]["description"],
            "sidecar_url": self.sidecar.url,
        }


def start_host(bench: Bench, name: str, core: int, warm_texts: list[str]) -> Host:
    """A sidecar of one core, then a worker of one process that embeds with it, on ``core``;
    the sidecar warmed up: the server's model registered from the server's files and loaded
    as a worker's first batch does (``onworker.check_model``), then run on ``warm_texts``,
    so that a backfill's rate is the hosts' steady one."""
    from console.jobs import onworker

    system = bench.system
    node = f"host-{name}"
    sidecar = system.start_worker_sidecar(node, cores={core}, settings=HOST_SETTINGS)
    worker = system.start_worker(
        name=node, env={"WORKER_INFERENCE_URL": sidecar.url}, concurrency=1, cores={core}
    )
    host = Host(name, core, f"{system.queue}-{node}", sidecar, worker)
    with bench.connect() as conn:
        (served,) = conn.execute("SELECT azure_local_ai.model_metadata(%s)", [bench.uri]).fetchone()
    onworker.check_model(sidecar.client, served)
    sidecar.client.embed(bench.uri, warm_texts)
    found = host.describe()["affinity"]
    if found != [core]:
        raise SystemExit(f"host {name}: its processes run on cores {found}, not only on {core}")
    return host


def measure(
    bench: Bench,
    mode: str,
    texts: list[str],
    *,
    workers: int,
    embed_on: str,
    batch_size: int | None,
    hosts: list[Host],
) -> tuple[Any, str, dict[str, Any]]:
    """A backfill in ``mode`` on a fresh table, then its checks: exactly once, and who
    embedded how many rows. Returns the job, its table and the figures."""
    table = f"bench_{mode}"
    job, result = backfill(
        bench, table, texts, workers=workers, batch_size=batch_size, embed_on=embed_on
    )
    cpu = result["cpu_s"]
    per_1000 = {part: round(cpu[part] * 1000 / len(texts), 3) for part in CPU_PARTS}
    per_1000["server"] = round(per_1000["postgres"] + per_1000["sidecar"], 3)
    result["cpu_s_per_1000_rows"] = per_1000
    result["others_share"] = round(others_share(result), 3)
    if hosts:  # how much of their cores the hosts' processes had
        own = cpu["workers"] + cpu["worker_sidecars"]
        result["hosts_busy"] = round(own / (cpu["wall"] * len(hosts)), 3)
    result["exactly_once"] = exactly_once(bench, job, table, len(texts))
    result["embedded_by"] = embedded_by(bench, job, hosts)
    return job, table, result


def embedded_by(bench: Bench, job: Any, hosts: list[Host]) -> dict[str, int]:
    """Rows by where they were embedded: ``server``, a host's name, or another worker's node."""
    names = {host.node: f"host {host.name}" for host in hosts}
    with bench.connect() as conn:
        rows = conn.execute(
            sql.SQL("SELECT embedded_by, count(*) FROM {} GROUP BY 1 ORDER BY 1").format(
                stamps(job)
            )
        ).fetchall()
    return {names.get(str(by).split("@")[0], str(by)): count for by, count in rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows of each backfill table")
    parser.add_argument("--insert-rate", type=float, default=20.0, help="INSERTs a second")
    parser.add_argument("--insert-seconds", type=float, default=30.0)
    parser.add_argument("--batch-size", type=int, help="the jobs' batch size (default: a job's)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit(f"two worker hosts need two cores; this process may use {cores}")

    stored = deployed_model(MODEL_URI)  # in the model store of VAR_DIR, before it moves
    texts = make_texts(args.rows, max_words=MAX_WORDS)
    out = var_dir() / "bench" / "scaleout.json"
    report: dict[str, Any] = {
        "model": f"{MODEL_URI} fp32",
        "machine": machine(),
        "rows": args.rows,
        "max_words": MAX_WORDS,
        "target_ratio": TARGET_RATIO,
    }
    delay = (args.insert_rate, args.insert_seconds)
    with bench_system("scaleout") as system:
        bench = Bench(system, MODEL_URI)
        run = partial(measure, bench, texts=texts, batch_size=args.batch_size)
        try:
            bench.prepare(stored.path)
            hosts = [start_host(bench, "a", cores[0], texts[:WARM_TEXTS])]
            print(f"backfill, {MODES['one_host']} ...", flush=True)
            job, table, report["one_host"] = run(
                "one_host", workers=1, embed_on="worker", hosts=hosts
            )
            bench.drop(job, table)  # its idle runner takes no turns on the hosts

            hosts.append(start_host(bench, "b", cores[1], texts[:WARM_TEXTS]))
            print(f"backfill, {MODES['two_hosts']} ...", flush=True)
            job, table, report["two_hosts"] = run(
                "two_hosts", workers=2, embed_on="worker", hosts=hosts
            )
            print("insert-to-vector delay, on the worker hosts ...", flush=True)
            report["two_hosts"]["delay"] = insert_delay(bench, job, table, args.rows + 1, *delay)
            report["hosts"] = [host.describe() for host in hosts]
            bench.drop(job, table)
            system.stop_workers()  # and their sidecars: the server's mode runs without them

            system.start_worker()
            print(f"backfill, {MODES['server']} ...", flush=True)
            job, table, report["server"] = run(
                "server", workers=SERVER_WORKERS, embed_on="server", hosts=[]
            )
            print("insert-to-vector delay, on the server ...", flush=True)
            report["server"]["delay"] = insert_delay(bench, job, table, args.rows + 1, *delay)
        finally:
            bench.clean_up()

    ratio = report["two_hosts"]["rows_per_s"] / report["one_host"]["rows_per_s"]
    report["two_hosts_ratio"] = round(ratio, 3)
    report["target_met"] = ratio >= TARGET_RATIO
    print_report(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {out}")
    return 0 if all(report[mode]["exactly_once"]["ok"] for mode in MODES) else 1


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(
        f"\nembedding jobs on worker hosts and on the server, {report['model']}, "
        f"{report['rows']} rows of at most {report['max_words']} words, on {m['cpu']} "
        f"({m['cores']} cores)\n"
    )
    for host in report["hosts"]:
        print(
            f"host {host['name']}: a worker of 1 process and a sidecar of "
            f"{host['sidecar_layout']}, on cores {host['affinity']}"
        )
    print(
        "PostgreSQL and the benchmark run on every core; on the server: the server's sidecar, "
        f"unpinned, and one worker process of concurrency {CONCURRENCY}, unpinned\n"
    )
    modes = {
        mode: f"{label}, job workers={report[mode]['workers']}" for mode, label in MODES.items()
    }
    width = max(len(label) for label in modes.values()) + 2
    print(f"{'':<{width + 8}}CPU seconds per 1000 rows (server: postgres + its sidecar)")
    print(
        f"{'mode':<{width}}{'rows/s':>8}{'server':>9}"
        + "".join(f"{heading:>11}" for heading in CPU_PARTS.values())
    )
    for mode, label in modes.items():
        r = report[mode]
        cpu = r["cpu_s_per_1000_rows"]
        print(
            f"{label:<{width}}{r['rows_per_s']:>8.0f}{cpu['server']:>9.2f}"
            + "".join(f"{cpu[part]:>11.2f}" for part in CPU_PARTS)
        )
    print(
        f"\n2 hosts / 1 host: {report['two_hosts_ratio']:.2f}x (target {TARGET_RATIO:g}x or more: "
        f"{'met' if report['target_met'] else 'NOT met'}); on the server / 1 host: "
        f"{report['server']['rows_per_s'] / report['one_host']['rows_per_s']:.2f}x"
    )
    print(
        "the hosts' processes kept their cores busy "
        + " and ".join(
            f"{report[mode]['hosts_busy']:.0%} of the time ({MODES[mode]})"
            for mode in ("one_host", "two_hosts")
        )
        + "; the rest: waiting for PostgreSQL, or their core taken by others"
    )
    noisy = {
        MODES[mode]: share
        for mode in MODES
        if (share := report[mode]["others_share"]) > NOISY_SHARE
    }
    if noisy:
        listed = ", ".join(f"{label} {share:.0%}" for label, share in noisy.items())
        print(
            f"! other processes took a large share of the busy CPU during: {listed}. Those "
            "figures are slowed and the ratios skewed: run again on a quiet machine."
        )
    print(
        f"\n{'mode':<{width}}{'first after':>12}{'server sidecar runs':>20}  exactly once, "
        "rows embedded by"
    )
    for mode, label in modes.items():
        r, e = report[mode], report[mode]["exactly_once"]
        once = "yes" if e["ok"] else "NO"
        by = ", ".join(f"{who} {count}" for who, count in r["embedded_by"].items())
        print(
            f"{label:<{width}}{r['to_first_embedding_s']:>10.1f} s{r['engine']['runs']:>20.0f}"
            f"  {once} ({e['stamped_once']}/{e['rows']} once, {e['null_vectors']} NULL, "
            f"min cos {e['sample_min_cos']}); {by}"
        )
    print(
        f"\n{'insert-to-vector delay':<{width}}{'INSERTs':>8}"
        + "".join(f"{h:>9}" for h in ("p50 ms", "p95 ms", "max ms"))
    )
    for mode in ("two_hosts", "server"):
        d = report[mode]["delay"]
        print(
            f"{modes[mode]:<{width}}{d['rows']:>8}{d['p50_ms']:>9.1f}{d['p95_ms']:>9.1f}"
            f"{d['max_ms']:>9.1f}"
        )
    d = report["server"]["delay"]
    print(f"(at {d['rate_per_s']:g} INSERTs/s, one row each, from a connection of their own)")


if __name__ == "__main__":
    sys.exit(main())
