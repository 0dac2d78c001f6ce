"""The whole system under load: SQL, the sidecar's HTTP API and the console at once.

Starts a system of its own under ``VAR_DIR/bench/load`` (``bench/system.py``: a managed server
on a free port, the inference sidecar, a Celery worker on a queue of its own, a console
database) and serves the console with ``manage.py runserver`` (as ``make run`` does) on a free
loopback port. all-MiniLM-L6-v2:v1 is copied from the model store into the system's store
(deployed from its package first if the store lacks it) and deployed through the console, as
an admin the script creates and signs in: the deployment registers and loads it and allows the
extension. Then ``--clients`` clients (64 by default) run for ``--seconds`` (60), each in a
thread of its own, one after another without pause, on texts of varied length in Latin, CJK,
Cyrillic and emoji (``bench/corpus.py``):

* a third through SQL, each in a session of its own: ``create_embeddings(uri, text)`` and the
  array overload over 2 to 16 texts, in turn;
* a third through the sidecar's ``POST /v1/embeddings``, 1 to 8 inputs a request;
* a third through the console, each signed in with its own session: the Server parameters
  blade (``/parameters/``), the playground's embed POST (htmx, 1 to 4 texts) and the
  deployment's page, in turn.

Figures: requests, errors by kind (each with an example), requests per second and p50/p95/p99
per path; the resident memory of the sidecar, of the SQL sessions' PostgreSQL backends and of
the console at the start of the measured run (after each client's warm-up) and at its end
(target: under 10% growth); the open file descriptors of the sidecar and the console and the
managed server's client connections with no client running, before and after (a leak shows as
a difference). Also the machine and its load average at the start, since another benchmark
running beside this one slows every figure.

Usage: ``.venv/bin/python bench/load.py [--clients N] [--seconds S]``.
Prints a table and writes ``VAR_DIR/bench/load.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.corpus import SCRIPTS, make_multiscript_texts
from bench.jobs import usage, usage_since
from bench.sql import deployed_model
from bench.system import System, bench_system, machine
from inference.config import PROJECT_ROOT, var_dir
from inference.process import ChildProcess, free_port, http_ready

MODEL_URI = "all-MiniLM-L6-v2:v1"
DIMENSIONS = 384
DATABASE = "bench_load"
TEXTS = 2_000
WARMUP_REQUESTS = 2
SQL_TIMEOUT_MS = 60_000  # bounds each SQL call: a stuck call is an error, never a hang
HTTP_TIMEOUT_S = 60.0
CONSOLE_START_S = 60.0
DEPLOY_TIMEOUT_S = 300.0
SETTLE_S = 10.0  # for sockets of finished clients to close before counting descriptors
RSS_GROWTH_TARGET = 0.10
PATHS = (
    "sql_single",
    "sql_array",
    "sidecar_embeddings",
    "console_parameters",
    "console_embed",
    "console_deployment",
)
ADMIN = "load-admin"


# -- what the clients record ----------------------------------------------------------------


@dataclass
class PathFigures:
    seconds: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)


class Tally:
    """Latencies and errors by path, from every client thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.paths = {path: PathFigures() for path in PATHS}
        self.recording = False  # warm-up requests are not counted

    def time(self, path: str, call: Callable[[], None]) -> None:
        started = time.perf_counter()
        try:
            call()
        except Exception as exc:
            self.error(path, exc)
            return
        elapsed = time.perf_counter() - started
        if self.recording:
            with self._lock:
                self.paths[path].seconds.append(elapsed)

    def error(self, path: str, exc: Exception) -> None:
        kind, message = _error_kind(exc)
        with self._lock:
            figures = self.paths.setdefault(path, PathFigures())
            figures.errors[kind] += 1
            figures.examples.setdefault(kind, message[:300])


class BadAnswer(Exception):
    """An answer with the wrong status or shape; the kind names which."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _error_kind(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, BadAnswer):
        return exc.kind, str(exc)
    if isinstance(exc, psycopg.Error):
        return f"SQLSTATE {exc.sqlstate or '?'} ({type(exc).__name__})", str(exc).strip()
    return type(exc).__name__, str(exc).strip() or repr(exc)


def _check_status(response: httpx.Response, expected: int = 200) -> None:
    if response.status_code != expected:
        raise BadAnswer(f"HTTP {response.status_code}", response.text[:300])


# -- the console over HTTP, signed in ---------------------------------------------------------


class ConsoleSession:
    """One signed-in user of the console over HTTP: its own cookies and CSRF token."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=HTTP_TIMEOUT_S)
        self.username, self.password = username, password

    def sign_in(self) -> None:
        page = self.http.get("/accounts/login/")
        _check_status(page)
        response = self.http.post(
            "/accounts/login/",
            data={
                "username": self.username,
                "password": self.password,
                "csrfmiddlewaretoken": self.http.cookies["csrftoken"],
            },
        )
        if response.status_code != 302 or "sessionid" not in self.http.cookies:
            raise BadAnswer(f"sign-in HTTP {response.status_code}", response.text[:300])

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path)

    def post(self, path: str, data: dict[str, str], *, htmx: bool = False) -> httpx.Response:
        headers = {"X-CSRFToken": self.http.cookies["csrftoken"]}
        if htmx:
            headers["HX-Request"] = "true"
        return self.http.post(path, data=data, headers=headers)

    def close(self) -> None:
        self.http.close()


def start_console(system: System) -> tuple[ChildProcess, str]:
    """``manage.py runserver`` on a free loopback port, with the system's environment; the
    process and its URL."""
    address = f"127.0.0.1:{free_port()}"
    web = ChildProcess(
        "console",
        [sys.executable, "manage.py", "runserver", "--noreload", address],
        system.base / "log" / "console.log",
        env=system.env,
        cwd=PROJECT_ROOT,
    )
    try:
        web.wait_ready(http_ready(f"http://{address}/accounts/login/"), CONSOLE_START_S)
    except Exception:
        web.stop()
        raise
    return web, f"http://{address}"


def deploy_through_console(system: System, session: Any, stored_path: Path) -> int:
    """The model copied into the system's store (unless there) and deployed from its page by
    ``session`` (a ConsoleSession, or Django's test client signed in): the steps that hold are
    skipped (fetch, prepare, install). The deployment's id once it succeeded."""
    from console.deployments.models import Deployment

    target = system.base / "models" / Path(*MODEL_URI.split(":"))
    if not target.exists():
        shutil.copytree(stored_path, target)
    response = session.post(f"/models/{MODEL_URI}/deploy/", {"precision": "fp32"})
    if response.status_code != 302:
        raise SystemExit(f"the console refused the deployment: HTTP {response.status_code}")
    pk = int(re.search(r"/deployments/(\d+)/", response.headers["location"]).group(1))  # type: ignore[union-attr]
    deadline = time.monotonic() + DEPLOY_TIMEOUT_S
    while not (row := Deployment.objects.get(pk=pk)).is_terminal:
        if time.monotonic() > deadline:
            raise SystemExit(f"deployment #{pk} still {row.state} after {DEPLOY_TIMEOUT_S:g} s")
        time.sleep(0.5)
    if row.state != Deployment.State.SUCCEEDED:
        raise SystemExit(f"deployment #{pk} {row.state}: {row.error}")
    return pk


# -- the clients ------------------------------------------------------------------------------


@dataclass
class Run:
    """What every client shares: where to go, the texts, the tally, and the phases."""

    system: System
    console_url: str
    password: str
    deployment_id: int
    texts: list[str]
    tally: Tally
    ready: threading.Barrier  # all warmed up; the main thread measures, then starts the clock
    finished: threading.Barrier  # all stopped; the main thread measures before they close
    go: threading.Event = field(default_factory=threading.Event)  # the clock runs
    measured: threading.Event = field(default_factory=threading.Event)  # clients may close
    deadline: float = 0.0
    backend_pids: list[int] = field(default_factory=list)


def sql_client(run: Run, index: int) -> None:
    rng = random.Random(index)
    single = "SELECT azure_local_ai.create_embeddings(%s, %s, timeout_ms => %s)"
    array = (
        "SELECT embedding FROM azure_local_ai.create_embeddings(%s, %s::text[],"
        " batch_size => %s, timeout_ms => %s)"
    )
    with run.system.server.connect(DATABASE) as conn:
        run.backend_pids.append(conn.info.backend_pid)

        def one() -> None:
            (vector,) = conn.execute(  # type: ignore[misc]
                single, [MODEL_URI, rng.choice(run.texts), SQL_TIMEOUT_MS]
            ).fetchone()
            if len(vector) != DIMENSIONS:
                raise BadAnswer("wrong dimensions", f"{len(vector)} dimensions")

        def many() -> None:
            texts = rng.sample(run.texts, rng.randint(2, 16))
            rows = conn.execute(
                array, [MODEL_URI, texts, rng.choice((4, 16, 128)), SQL_TIMEOUT_MS]
            ).fetchall()
            if len(rows) != len(texts) or any(len(r[0]) != DIMENSIONS for r in rows):
                raise BadAnswer("wrong rows", f"{len(rows)} rows for {len(texts)} texts")

        _loop(run, (("sql_single", one), ("sql_array", many)))


def sidecar_client(run: Run, index: int) -> None:
    rng = random.Random(index)
    with httpx.Client(base_url=run.system.sidecar.url, timeout=HTTP_TIMEOUT_S) as http:

        def embed() -> None:
            texts = rng.sample(run.texts, rng.randint(1, 8))
            body: dict[str, Any] = {"model": MODEL_URI, "input": texts}
            if len(texts) == 1 and rng.random() < 0.5:
                body["input"] = texts[0]
            if rng.random() < 0.5:
                body["encoding_format"] = "base64"
            response = http.post("/v1/embeddings", json=body)
            _check_status(response)
            data = response.json()["data"]
            if len(data) != len(texts):
                raise BadAnswer("wrong rows", f"{len(data)} embeddings for {len(texts)} texts")

        _loop(run, (("sidecar_embeddings", embed),))


def console_client(run: Run, index: int) -> None:
    rng = random.Random(index)
    session = ConsoleSession(run.console_url, ADMIN, run.password)
    try:
        session.sign_in()

        def parameters() -> None:
            _check_status(session.get("/parameters/"))

        def embed() -> None:
            texts = rng.sample(run.texts, rng.randint(1, 4))
            form = {"model": MODEL_URI, "input_type": "none", "texts": "\n".join(texts)}
            _check_status(session.post("/playground/embed/", form, htmx=True))

        def deployment() -> None:
            _check_status(session.get(f"/deployments/{run.deployment_id}/"))

        _loop(
            run,
            (
                ("console_parameters", parameters),
                ("console_embed", embed),
                ("console_deployment", deployment),
            ),
        )
    finally:
        session.close()


def _loop(run: Run, calls: tuple[tuple[str, Callable[[], None]], ...]) -> None:
    """Warm up, wait for the start, then call in turn until the deadline; wait for the end."""
    for turn in range(WARMUP_REQUESTS):
        path, call = calls[turn % len(calls)]
        run.tally.time(path, call)
    run.ready.wait()
    run.go.wait()
    turn = 0
    while time.monotonic() < run.deadline:
        path, call = calls[turn % len(calls)]
        run.tally.time(path, call)
        turn += 1
    run.finished.wait()
    run.measured.wait()


def _guarded(client: Callable[[Run, int], None], run: Run, index: int) -> None:
    """A client that cannot even start still takes part in the barriers (as an error)."""
    try:
        client(run, index)
    except threading.BrokenBarrierError:
        pass
    except Exception as exc:
        run.tally.error(f"{client.__name__.split('_')[0]}_setup", exc)
        run.ready.abort()


CLIENTS = (sql_client, sidecar_client, console_client)


# -- what the system holds --------------------------------------------------------------------


def memory(run: Run, console: ChildProcess) -> dict[str, float]:
    """Resident memory (MiB) of the sidecar, the SQL sessions' backends and the console;
    for the backends also their own pages (USS), which leave out the shared buffers."""
    mib = 2**20
    backends = [psutil.Process(pid) for pid in run.backend_pids]
    full = [b.memory_full_info() for b in backends]
    return {
        "sidecar_rss_mib": psutil.Process(run.system.sidecar.process.pid).memory_info().rss / mib,
        "backends_rss_mib": sum(f.rss for f in full) / mib,
        "backends_uss_mib": sum(f.uss for f in full) / mib,
        "console_rss_mib": psutil.Process(console.pid).memory_info().rss / mib,
    }


def handles(system: System, console: ChildProcess) -> dict[str, int]:
    """Open descriptors of the sidecar and the console, and client connections of the
    managed server (this query's own left out)."""
    with system.server.connect() as conn:
        (connections,) = conn.execute(  # type: ignore[misc]
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchone()
    return {
        "sidecar_fds": psutil.Process(system.sidecar.process.pid).num_fds(),
        "console_fds": psutil.Process(console.pid).num_fds(),
        "postgres_connections": connections,
    }


def settled_handles(
    system: System, console: ChildProcess, before: dict[str, int]
) -> dict[str, int]:
    """Handles once they are back to ``before``, or after SETTLE_S (closing sockets take a
    moment to go)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        now = handles(system, console)
        if all(now[k] <= before[k] for k in now) or time.monotonic() > deadline:
            return now
        time.sleep(0.5)


# -- the run ----------------------------------------------------------------------------------


def _percentiles(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    ms = np.array(seconds) * 1000
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)}


def prepare_database(system: System, name: str = DATABASE) -> None:
    """A database ``name`` of the system's server with azure_local_ai created in it."""
    with system.server.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with system.server.connect(name) as conn:
        conn.execute("CREATE EXTENSION azure_local_ai")


def _cpu_s(process: ChildProcess) -> float:
    times = psutil.Process(process.pid).cpu_times()
    return times.user + times.system


def drive(
    run: Run, console: ChildProcess, seconds: float
) -> tuple[float, dict[str, float], dict[str, float], dict[str, Any]]:
    """Start the clients, run them for ``seconds`` once all are warmed up, and wait until they
    have closed their connections; the measured seconds, the memory at start and end, and
    where the time went (CPU seconds by part, the others' included; the sidecar's model runs)."""
    clients = run.ready.parties - 1
    threads = [
        threading.Thread(target=_guarded, args=(CLIENTS[i % len(CLIENTS)], run, i), daemon=True)
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    try:
        try:
            run.ready.wait()
        except threading.BrokenBarrierError:
            problems = {p: f.examples for p, f in run.tally.paths.items() if f.examples}
            raise SystemExit(f"a client could not start: {problems}") from None
        at_start = memory(run, console)
        before, console_before = usage(run.system), _cpu_s(console)
        run.tally.recording = True
        started = time.monotonic()
        run.deadline = started + seconds
        run.go.set()
        print(f"{clients} clients running for {seconds:g} s ...", flush=True)
        run.finished.wait(timeout=seconds + HTTP_TIMEOUT_S + 30)
        elapsed = time.monotonic() - started
        run.tally.recording = False
        spent = usage_since(run.system, before, elapsed)
        cpu = spent["cpu_s"]
        cpu["console"] = round(_cpu_s(console) - console_before, 2)  # not one of the system's
        cpu["others"] = round(max(0.0, cpu["others"] - cpu["console"]), 2)
        at_end = memory(run, console)
    finally:
        run.go.set()  # whatever happened, the clients end and close what they opened
        run.measured.set()
        for thread in threads:
            thread.join(timeout=HTTP_TIMEOUT_S)
    return elapsed, at_start, at_end, spent


def measure(args: argparse.Namespace, system: System, stored_path: Path) -> dict[str, Any]:
    import secrets

    from django.contrib.auth.models import User

    password = secrets.token_urlsafe(16)
    User.objects.create_superuser(ADMIN, password=password)
    system.start_worker()
    console, console_url = start_console(system)
    try:
        admin = ConsoleSession(console_url, ADMIN, password)
        try:
            admin.sign_in()
            deployment_id = deploy_through_console(system, admin, stored_path)
        finally:
            admin.close()
        prepare_database(system)
        print(f"deployed {MODEL_URI} through the console (deployment #{deployment_id})")

        idle_before = handles(system, console)
        clients = [CLIENTS[i % len(CLIENTS)] for i in range(args.clients)]
        run = Run(
            system=system,
            console_url=console_url,
            password=password,
            deployment_id=deployment_id,
            texts=make_multiscript_texts(TEXTS),
            tally=Tally(),
            ready=threading.Barrier(args.clients + 1),
            finished=threading.Barrier(args.clients + 1),
        )
        elapsed, at_start, at_end, spent = drive(run, console, args.seconds)
        idle_after = settled_handles(system, console, idle_before)
    finally:
        console.stop()

    paths = {}
    for path, figures in run.tally.paths.items():
        count = len(figures.seconds) + sum(figures.errors.values())
        paths[path] = {
            "requests": count,
            "errors": sum(figures.errors.values()),
            "per_s": round(count / elapsed, 1),
            **_percentiles(figures.seconds),
            "error_kinds": dict(figures.errors),
            "error_examples": figures.examples,
        }
    growth = {
        key: round((at_end[key] - at_start[key]) / at_start[key], 4)
        for key in at_start
        if at_start[key]
    }
    return {
        "clients": {
            "total": args.clients,
            "sql": clients.count(sql_client),
            "sidecar": clients.count(sidecar_client),
            "console": clients.count(console_client),
        },
        "seconds": round(elapsed, 1),
        "paths": paths,
        **spent,
        "memory_mib": {
            "start": {k: round(v, 1) for k, v in at_start.items()},
            "end": {k: round(v, 1) for k, v in at_end.items()},
            "growth": growth,
            "target_growth": RSS_GROWTH_TARGET,
        },
        "idle_handles": {"before": idle_before, "after": idle_after},
        "backends": len(run.backend_pids),
    }


def report(results: dict[str, Any]) -> None:
    ran_on, load = results["machine"], results["load_average"]
    clients = results["clients"]
    print(
        f"\n{results['model']}, {clients['total']} clients ({clients['sql']} SQL, "
        f"{clients['sidecar']} sidecar, {clients['console']} console) for "
        f"{results['seconds']} s on {ran_on['cpu']} ({ran_on['cores']} cores, "
        f"{ran_on['memory_gib']} GiB); load average at start {load['start'][0]:.2f}"
        + (" (busy: other work was running)" if results["busy"] else "")
    )
    print(
        f"\n{'path':<22}{'requests':>9}{'errors':>8}{'req/s':>8}"
        f"{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
    )
    total = errors = 0
    for path, f in results["paths"].items():
        total, errors = total + f["requests"], errors + f["errors"]
        cells = [f"{f[k]:>9}" if f[k] is not None else f"{'-':>9}" for k in PERCENTILE_KEYS]
        print(f"{path:<22}{f['requests']:>9}{f['errors']:>8}{f['per_s']:>8}" + "".join(cells))
    print(f"{'all':<22}{total:>9}{errors:>8}")
    for path, f in results["paths"].items():
        for kind, count in f["error_kinds"].items():
            print(f"  {path}: {count} x {kind}: {f['error_examples'][kind][:160]}")

    cpu, engine = results["cpu_s"], results["engine"]
    print(
        "\nCPU seconds: "
        + ", ".join(f"{part} {v:g}" for part, v in cpu.items() if part != "wall")
        + f" in {cpu['wall']:g} s of wall time; the model ran {engine['runs']:g} times, "
        f"{engine['texts_per_run']:g} texts a run, {engine['model_share_of_wall']:.0%} of the time"
    )
    memory_figures = results["memory_mib"]
    print(f"\n{'memory (MiB)':<34}{'start':>9}{'end':>9}{'growth':>9}")
    for key, start in memory_figures["start"].items():
        growth = memory_figures["growth"].get(key)
        shown = f"{growth:>9.1%}" if growth is not None else f"{'-':>9}"
        print(f"{key:<34}{start:>9}{memory_figures['end'][key]:>9}{shown}")
    idle = results["idle_handles"]
    print(f"\n{'with no client (leaks)':<34}{'before':>9}{'after':>9}")
    for key, before in idle["before"].items():
        print(f"{key:<34}{before:>9}{idle['after'][key]:>9}")


PERCENTILE_KEYS = ("p50_ms", "p95_ms", "p99_ms")


def busy(load_average: tuple[float, float, float]) -> bool:
    """A load average above half the cores before a run: something else was running."""
    return load_average[0] >= (os.cpu_count() or 1) / 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    if args.clients < 3:
        parser.error("--clients must be at least 3: one for each way in")

    out = var_dir() / "bench" / "load.json"  # VAR_DIR moves into the system below
    load_start = os.getloadavg()
    stored = deployed_model(MODEL_URI)
    with bench_system("load") as system:
        figures = measure(args, system, stored.path)
    results = {
        "model": MODEL_URI,
        "machine": machine(),
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "busy": busy(load_start),
        "texts": {"count": TEXTS, "scripts": list(SCRIPTS)},
        "console_server": "manage.py runserver --noreload (threaded)",
        **figures,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    report(results)
    print(f"\nwritten to {out}")
    return 1 if any(f["errors"] for f in results["paths"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
