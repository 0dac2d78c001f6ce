"""Fault drills: the system's parts killed, stalled, stopped or out of disk while it works.

Starts a system of its own under ``VAR_DIR/bench/drills`` (``bench/system.py``: a managed server
on a free port, the inference sidecar, a Celery worker on a queue of its own, a console
database) with a private ``redis-server`` on a free port as its broker (the machine's own Redis
is left alone), deploys all-MiniLM-L6-v2:v1 through the console (Django's test client, signed
in as an admin), then runs each drill, bounded in time, and says what state each ended in:

* ``sidecar-killed``: the sidecar SIGKILLed and restarted on its port while several SQL sessions
  call it: calls in the outage fail within their ``timeout_ms`` with SQLSTATE 08001 or 08006,
  and the same sessions (same backends, no reconnect) succeed after the restart;
* ``sidecar-stalled``: the sidecar SIGSTOPped: ``statement_timeout``, a cancel (what Ctrl-C
  sends) and ``timeout_ms`` each end a call, within about 100 ms of their moment; no backend is
  left waiting; SIGCONT, and the sessions work again;
* ``server-restart-save``: the managed server restarted in the middle of a Save of three
  parameters in the Server parameters blade (the console's POST, the apply path behind it):
  between the first and the second ``ALTER SYSTEM``, and between the reload and the change
  history; the batch must end all applied and recorded, or not applied at all;
* ``redis-stopped``: the broker stopped while a deployment runs, then started again; and
  stopped when a deployment is requested, then started again;
* ``worker-killed``: the Celery worker SIGKILLed between deployment steps (after verify,
  after install), a new worker started each time;
* ``store-full``: the model store on a small tmpfs, with no room to stage an int8 deployment,
  with room to stage but not to write the int8 graph, and mounted read-only: the deployment
  fails saying why, and the model already installed still serves.

Usage: ``.venv/bin/python bench/drills.py [--only NAME,...]``. ``store-full`` mounts tmpfs, so
it needs root (it is skipped otherwise). Prints a pass/fail table and writes
``VAR_DIR/bench/drills.json``; exits 1 if a drill failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.deployments import HTMX_BLADE
from bench.load import DIMENSIONS, MODEL_URI, busy, deploy_through_console, prepare_database
from bench.sql import deployed_model
from bench.system import System, bench_system, machine
from inference.client import InferenceError
from inference.config import var_dir
from inference.process import ChildProcess, free_port, start_sidecar
from inference.store import STAGING_PREFIX, ModelStore

DATABASE = "bench_drills"
TEXT = "The database keeps every embedding beside the row it describes."
EMBED = "SELECT azure_local_ai.create_embeddings(%s, %s, timeout_ms => %s)"
INTERRUPT_TARGET_MS = 100.0
DEPLOY_TIMEOUT_S = 300.0
POLL_S = 0.02


@dataclass
class Outcome:
    drill: str
    passed: bool | None  # None: skipped
    happened: str  # what was done and what the system did
    ended: str  # the state it ended in
    figure: str  # the one figure of the table
    details: dict[str, Any] = field(default_factory=dict)


class DrillFailed(Exception):
    """A drill could not go on (a part did not come back, a wait ran out)."""


def wait_for(what: str, check: Callable[[], Any], timeout: float, poll: float = POLL_S) -> Any:
    """``check()``'s first true value, polling; DrillFailed after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise DrillFailed(f"{what} did not happen within {timeout:g} s")
        time.sleep(poll)
    return value


# -- the lab: the system, its broker, an admin signed in --------------------------------------


class PrivateRedis:
    """A ``redis-server`` of the drills' own on a loopback port, with no persistence."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port, self.directory = port, directory
        self.url = f"redis://127.0.0.1:{port}/0"
        self.child: ChildProcess | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed: apt-get install redis-server")
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.directory)]
        self.child = ChildProcess("redis", argv, self.directory / "redis.log")
        self.child.wait_ready(self.answers, 15)

    def answers(self) -> bool:
        try:
            with redis.Redis.from_url(self.url, socket_timeout=1) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()


@dataclass
class Lab:
    system: System
    broker: PrivateRedis
    client: Any  # Django's test client, signed in as an admin
    stored_path: Path  # the model in this machine's own store, copied into the system's

    @property
    def models_dir(self) -> Path:
        return self.system.base / "models"

    def connect(self) -> psycopg.Connection:
        return self.system.server.connect(DATABASE)

    def worker(self) -> ChildProcess:
        alive = [w for w in self.system.workers if w.alive()]
        if not alive:
            raise DrillFailed("no Celery worker is running")
        return alive[-1]


def embeds(conn: psycopg.Connection, timeout_ms: int = 30_000) -> bool:
    row = conn.execute(EMBED, [MODEL_URI, TEXT, timeout_ms]).fetchone()
    return row is not None and len(row[0]) == DIMENSIONS


def serves(lab: Lab) -> bool:
    """The model answers through SQL and through the sidecar's HTTP API."""
    try:
        with lab.connect() as conn:
            sql_ok = embeds(conn)
        response = httpx.post(
            f"{lab.system.sidecar.url}/v1/embeddings",
            json={"model": MODEL_URI, "input": [TEXT]},
            timeout=30,
        )
        return sql_ok and response.status_code == 200
    except (psycopg.Error, httpx.HTTPError):
        return False


def ensure_served(lab: Lab) -> None:
    """Deployed through the console again if an earlier drill left the model unserved."""
    if not serves(lab):
        deploy_through_console(lab.system, lab.client, lab.stored_path)


def forget_model(lab: Lab) -> None:
    """Out of the sidecar and the store: the next deployment does every step."""
    with contextlib.suppress(InferenceError):
        lab.system.sidecar.client.unregister(MODEL_URI)
    ModelStore(lab.models_dir).remove(MODEL_URI)


def request_deployment(lab: Lab, action: str = "deploy", precision: str = "fp32") -> int:
    """Deploy (or disable) from the model's page; the new deployment's id."""
    response = lab.client.post(f"/models/{MODEL_URI}/{action}/", {"precision": precision})
    if response.status_code != 302:
        raise DrillFailed(f"the console answered the {action} with HTTP {response.status_code}")
    return int(response.headers["Location"].rstrip("/").rsplit("/", 1)[1])


def deployment(pk: int) -> Any:
    from console.deployments.models import Deployment

    return Deployment.objects.get(pk=pk)


def finished(pk: int, timeout: float = DEPLOY_TIMEOUT_S) -> Any:
    return wait_for(
        f"deployment #{pk} to finish",
        lambda: (row := deployment(pk)).is_terminal and row,
        timeout,
        poll=0.2,
    )


def step_state(pk: int, name: str) -> str:
    return deployment(pk).steps.get(name=name).state


def describe(row: Any) -> str:
    steps = ", ".join(f"{s.name} {s.state}" for s in row.steps.all())
    return f"#{row.pk} {row.state} after {row.attempts} claim(s) ({steps})" + (
        f"; error: {row.error}" if row.error else ""
    )


def store_leftovers(lab: Lab) -> list[str]:
    """Staging or replaced directories left beside the model's versions."""
    parent = lab.models_dir / MODEL_URI.split(":")[0]
    if not parent.is_dir():
        return []
    return sorted(
        p.name
        for p in parent.iterdir()
        if p.name.startswith((STAGING_PREFIX, ".")) and not p.name.startswith(".lock")
    )


def stored_state(lab: Lab) -> str:
    stored = ModelStore(lab.models_dir).get(MODEL_URI)
    if stored is None:
        return "not in the store"
    problems = stored.verify()
    leftovers = store_leftovers(lab)
    return (
        f"in the store ({'/'.join(stored.precisions)}, "
        + ("verifies" if not problems else f"damaged: {problems}")
        + (f", leftovers {leftovers}" if leftovers else "")
        + ")"
    )


# -- drill: the sidecar killed and restarted under SQL sessions --------------------------------

KILL_SESSIONS = 6
KILL_TIMEOUT_MS = 2_000
OUTAGE_S = 3.0
AFTER_RESTART_S = 4.0


@dataclass
class Call:
    session: int
    started: float
    ended: float
    sqlstate: str | None  # None: it succeeded
    backend: int


def drill_sidecar_killed(lab: Lab) -> Outcome:
    ensure_served(lab)
    calls: list[Call] = []
    stop = threading.Event()
    conns = [lab.connect() for _ in range(KILL_SESSIONS)]
    pids = [c.info.backend_pid for c in conns]

    def session(index: int) -> None:
        conn = conns[index]
        while not stop.is_set():
            started = time.monotonic()
            try:
                embeds(conn, KILL_TIMEOUT_MS)
                state = None
            except psycopg.Error as exc:
                state = exc.sqlstate or "?"
            ended = time.monotonic()
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
            calls.append(Call(index, started, ended, state, backend))
            if state is not None:
                time.sleep(0.05)  # a refused connection fails at once: no busy loop

    threads = [threading.Thread(target=session, args=(i,), daemon=True) for i in range(len(conns))]
    old = lab.system.sidecar
    try:
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        killed = time.monotonic()
        old.kill()
        time.sleep(OUTAGE_S)
        restarted = time.monotonic()
        lab.system.sidecar = start_sidecar(old.var_dir, port=old.port, log_dir=old.log_path.parent)
        ready = time.monotonic()
        time.sleep(AFTER_RESTART_S)
    finally:
        stop.set()
        for thread in threads:
            thread.join(KILL_TIMEOUT_MS / 1000 + 10)
        hung = sum(thread.is_alive() for thread in threads)
        for conn in conns:
            conn.close()

    failed = [c for c in calls if c.sqlstate is not None]
    states = Counter(c.sqlstate for c in failed)
    outside = [c for c in failed if c.ended < killed or c.started > ready]
    slowest = max((c.ended - c.started for c in failed), default=0.0)
    recovered = {}
    for index, pid in enumerate(pids):
        after = [c for c in calls if c.session == index and c.started >= ready]
        first_ok = next((c for c in after if c.sqlstate is None), None)
        same = all(c.backend == pid for c in calls if c.session == index)
        recovered[index] = {
            "backend": pid,
            "same_backend": same,
            "first_success_after_ready_ms": round((first_ok.ended - ready) * 1000, 1)
            if first_ok
            else None,
            "errors_after_ready": sum(c.sqlstate is not None for c in after),
        }
    passed = (
        not hung
        and bool(failed)
        and set(states) <= {"08001", "08006"}
        and not outside
        and slowest <= KILL_TIMEOUT_MS / 1000
        and all(r["same_backend"] and r["first_success_after_ready_ms"] is not None
                for r in recovered.values())
        and not any(r["errors_after_ready"] for r in recovered.values())
    )  # fmt: skip
    worst_back = max(
        (r["first_success_after_ready_ms"] or 0.0 for r in recovered.values()), default=0.0
    )
    return Outcome(
        "sidecar-killed",
        passed,
        f"{KILL_SESSIONS} sessions calling create_embeddings (timeout_ms {KILL_TIMEOUT_MS}) "
        f"without pause; SIGKILL, {OUTAGE_S:g} s down, restarted on its port in "
        f"{ready - restarted:.1f} s (the model reloaded from its registry). {len(failed)} calls "
        f"failed, SQLSTATE {dict(states)}, the slowest in {slowest * 1000:.0f} ms; "
        f"{len(outside)} failures outside the outage; {hung} sessions hung",
        "every session on its first backend and embedding again"
        if passed
        else f"sessions after the restart: {recovered}",
        f"failed calls took ≤ {slowest * 1000:.0f} ms; back {worst_back:.0f} ms after ready",
        {
            "calls": len(calls),
            "failed": len(failed),
            "sqlstates": dict(states),
            "failures_outside_outage": len(outside),
            "slowest_failure_ms": round(slowest * 1000, 1),
            "outage_s": round(ready - killed, 2),
            "restart_s": round(ready - restarted, 2),
            "sessions": recovered,
            "hung_sessions": hung,
        },
    )


# -- drill: the sidecar stalled ----------------------------------------------------------------

STALL_STATEMENT_TIMEOUT_MS = 500
STALL_TIMEOUT_MS = 500
STALL_CANCEL_AFTER_S = 0.5
# What bounds a call whose interrupt did not work; it then ends with another message.
STALL_FALLBACK_MS = 10_000


def _interrupted(conn: psycopg.Connection, statement: str, params: list[Any]) -> tuple[Any, float]:
    """Run a statement expected to be interrupted: (its error or None, when it ended)."""
    try:
        conn.execute(statement, params)
    except psycopg.Error as exc:
        return exc, time.monotonic()
    return None, time.monotonic()


def _kind(error: psycopg.Error | None, cause: str) -> str | None:
    """The error's SQLSTATE if its message names ``cause``, else what it was."""
    if error is None:
        return None
    return error.sqlstate if cause in str(error) else f"{error.sqlstate}: {error}"


def drill_sidecar_stalled(lab: Lab) -> Outcome:
    ensure_served(lab)
    pid = lab.system.sidecar.process.pid
    figures: dict[str, Any] = {}
    errors: dict[str, str | None] = {}
    with lab.connect() as first, lab.connect() as second, lab.connect() as watcher:
        pids = [first.info.backend_pid, second.info.backend_pid]
        for conn in (first, second):
            embeds(conn)  # connections to the sidecar are made and kept
        os.kill(pid, signal.SIGSTOP)
        try:
            # statement_timeout
            first.execute(f"SET statement_timeout = {STALL_STATEMENT_TIMEOUT_MS}")
            started = time.monotonic()
            error, ended = _interrupted(first, EMBED, [MODEL_URI, TEXT, STALL_FALLBACK_MS])
            first.execute("RESET statement_timeout")
            figures["statement_timeout_overshoot_ms"] = round(
                (ended - started) * 1000 - STALL_STATEMENT_TIMEOUT_MS, 1
            )
            errors["statement_timeout"] = _kind(error, "statement timeout")

            # a cancel request, as Ctrl-C in psql sends it
            outcome: dict[str, Any] = {}

            def call() -> None:
                outcome["error"], outcome["ended"] = _interrupted(
                    second, EMBED, [MODEL_URI, TEXT, STALL_FALLBACK_MS]
                )

            thread = threading.Thread(target=call, daemon=True)
            thread.start()
            wait_for(
                "the call to start",
                lambda: (
                    watcher.execute(
                        "SELECT state = 'active' FROM pg_stat_activity WHERE pid = %s", [pids[1]]
                    ).fetchone()
                    == (True,)
                ),
                10,
            )
            time.sleep(STALL_CANCEL_AFTER_S)  # well inside the call, waiting on the sidecar
            cancelled = time.monotonic()
            second.cancel_safe(timeout=10)
            thread.join(10)
            if thread.is_alive():
                raise DrillFailed("the cancelled call did not end within 10 s")
            figures["cancel_ms"] = round((outcome["ended"] - cancelled) * 1000, 1)
            errors["cancel"] = _kind(outcome["error"], "user request")

            # timeout_ms
            started = time.monotonic()
            error, ended = _interrupted(first, EMBED, [MODEL_URI, TEXT, STALL_TIMEOUT_MS])
            figures["timeout_ms_overshoot_ms"] = round(
                (ended - started) * 1000 - STALL_TIMEOUT_MS, 1
            )
            errors["timeout_ms"] = _kind(error, f"timeout_ms = {STALL_TIMEOUT_MS}")

            waiting = watcher.execute(
                "SELECT pid, state, wait_event, left(query, 60) FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                " AND state <> 'idle'"
            ).fetchall()
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed = time.monotonic()
        back = [embeds(conn) for conn in (first, second)]
        back_s = time.monotonic() - resumed
        same = [first.info.backend_pid, second.info.backend_pid] == pids
    worst = max(figures.values())
    passed = (
        set(errors.values()) == {"57014"}
        and not waiting
        and all(back)
        and same
        and worst <= INTERRUPT_TARGET_MS
    )
    return Outcome(
        "sidecar-stalled",
        passed,
        "SIGSTOP; statement_timeout "
        f"{STALL_STATEMENT_TIMEOUT_MS} ms ended a call {figures['statement_timeout_overshoot_ms']}"
        f" ms after it; a cancel {STALL_CANCEL_AFTER_S:g} s into a call ended it in "
        f"{figures['cancel_ms']} ms; timeout_ms {STALL_TIMEOUT_MS} overshot by "
        f"{figures['timeout_ms_overshoot_ms']} ms; SQLSTATE {errors}; backends not idle while "
        f"stopped: {waiting or 'none'}; SIGCONT",
        f"both sessions on their backends embedding again {back_s * 1000:.0f} ms after SIGCONT"
        if all(back) and same
        else "a session did not recover",
        f"interrupt ≤ {worst:.0f} ms (target {INTERRUPT_TARGET_MS:.0f})",
        {**figures, "sqlstates": errors, "not_idle_while_stopped": [list(w) for w in waiting]},
    )


# -- drill: the managed server restarted during a Save -----------------------------------------

SAVE_VALUES = {
    "work_mem": "8192",
    "maintenance_work_mem": "131072",
    "log_min_duration_statement": "2500",
}


@contextlib.contextmanager
def restart_after(lab: Lab, matches: Callable[[str], bool], nth: int) -> Iterator[list[str]]:
    """While the block runs, the managed server is restarted just after the ``nth``
    statement of this process that ``matches`` (its text) has run; yields the statements."""
    original = psycopg.Connection.execute
    seen: list[str] = []

    def execute(conn: psycopg.Connection, query: Any, *args: Any, **kwargs: Any) -> Any:
        text = query if isinstance(query, str) else query.as_string(conn)
        result = original(conn, query, *args, **kwargs)
        if matches(text):
            seen.append(text)
            if len(seen) == nth:
                lab.system.server.restart()
        return result

    psycopg.Connection.execute = execute  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        psycopg.Connection.execute = original  # type: ignore[method-assign]


def _save_state(lab: Lab) -> tuple[dict[str, str], dict[str, str]]:
    """The drill's parameters as ALTER SYSTEM wrote them and as the server uses them."""
    from serverparams.apply import auto_conf

    with lab.system.server.connect() as conn:
        written = {k: v for k, v in auto_conf(conn).items() if k in SAVE_VALUES}
        used = {
            name: conn.execute(
                "SELECT setting FROM pg_settings WHERE name = %s", [name]
            ).fetchone()[0]  # type: ignore[index]
            for name in SAVE_VALUES
        }
    return written, used


def drill_server_restart_save(lab: Lab) -> Outcome:
    from serverparams.apply import auto_conf, write_back
    from serverparams.catalog import read_catalog
    from serverparams.models import ParameterChange

    cases = {
        "after the first ALTER SYSTEM": (lambda s: s.startswith("ALTER SYSTEM"), 1),
        "after the reload, before the history": (lambda s: "pg_reload_conf" in s, 1),
    }
    results = {}
    for case, (matches, nth) in cases.items():
        with lab.system.server.connect() as conn:
            snapshot = auto_conf(conn)
            shown = read_catalog(conn).by_name()
        before = _save_state(lab)
        history_before = ParameterChange.objects.count()
        form: dict[str, Any] = {"name": list(SAVE_VALUES)}
        for name, value in SAVE_VALUES.items():
            form[f"value:{name}"] = value
            form[f"base:{name}"] = shown[name].value
        started = time.monotonic()
        with restart_after(lab, matches, nth) as seen:
            response = lab.client.post("/parameters/save/", form, **HTMX_BLADE)
        answer_s = time.monotonic() - started
        page = response.content.decode(errors="replace")
        written, used = _save_state(lab)
        recorded = ParameterChange.objects.count() - history_before
        applied = [n for n in SAVE_VALUES if written.get(n) == SAVE_VALUES[n]]
        if not applied and written == before[0]:
            state = "nothing applied"
        elif len(applied) == len(SAVE_VALUES) and recorded == len(SAVE_VALUES):
            state = "all applied and recorded"
        elif len(applied) == len(SAVE_VALUES):
            state = f"all applied, {recorded} of {len(SAVE_VALUES)} recorded in the change history"
        else:
            state = (
                f"half-applied: {', '.join(applied)} of {', '.join(SAVE_VALUES)} in effect after "
                f"the restart, {recorded} recorded in the change history"
            )
        said = _said(page)
        results[case] = {
            "restarted_after": seen[-1][:80] if len(seen) >= nth else None,
            "http_status": response.status_code,
            "answer_s": round(answer_s, 2),
            "page_says": said,
            "written": written,
            "in_use": used,
            "recorded": recorded,
            "state": state,
            "clean": state in ("nothing applied", "all applied and recorded")
            and response.status_code < 500,
        }
        with lab.system.server.connect() as conn:  # back as before, for the next case
            write_back(conn, snapshot, SAVE_VALUES)
            conn.execute("SELECT pg_reload_conf()")
    passed = all(r["clean"] for r in results.values())
    return Outcome(
        "server-restart-save",
        passed,
        "a Save of "
        + ", ".join(SAVE_VALUES)
        + " (POST /parameters/save/) with the server restarted "
        + "; ".join(
            f"{case}: HTTP {r['http_status']} in {r['answer_s']} s, the page says "
            f"{r['page_says']!r}"
            for case, r in results.items()
        ),
        "; ".join(f"{case}: {r['state']}" for case, r in results.items()),
        f"{sum(r['clean'] for r in results.values())}/{len(results)} cases clean",
        results,
    )


def _said(page: str) -> str:
    """The first message of a page fragment, without its markup."""
    import re

    for match in re.finditer(r'class="message[^"]*"[^>]*>(.*?)</', page, re.S):
        text = " ".join(re.sub(r"<[^>]+>", " ", match.group(1)).split())
        if text:
            return text[:200]
    return " ".join(re.sub(r"<[^>]+>", " ", page).split())[:200]


# -- drill: the broker stopped -----------------------------------------------------------------

BROKER_DOWN_S = 5.0
QUEUED_WAIT_S = 30.0


def drill_redis_stopped(lab: Lab) -> Outcome:
    details: dict[str, Any] = {}
    # 1. Stopped while a deployment runs (its longest step, the ONNX export), then started.
    forget_model(lab)
    pk = request_deployment(lab)
    wait_for("the prepare step", lambda: step_state(pk, "prepare") == "running", 120, 0.1)
    lab.broker.stop()
    page = lab.client.get(f"/deployments/{pk}/")
    time.sleep(BROKER_DOWN_S)
    lab.broker.start()
    row = finished(pk)
    running = {
        "deployment": describe(row),
        "page_while_down": page.status_code,
        "served": serves(lab),
    }
    details["during_a_deployment"] = running

    # 2. Stopped when a deployment is asked for (a disable), then started again.
    lab.broker.stop()
    started = time.monotonic()
    try:
        pk2 = request_deployment(lab, "disable")
        answer_s = time.monotonic() - started
        state_while_down = deployment(pk2).state
    finally:
        lab.broker.start()
    try:
        # The person who asked watches the deployment's page, as Save leads them to.
        row2 = wait_for(
            f"deployment #{pk2} to finish while its page is watched",
            lambda: (
                lab.client.get(f"/deployments/{pk2}/").status_code == 200
                and (row := deployment(pk2)).is_terminal
                and row
            ),
            QUEUED_WAIT_S,
            poll=1.0,
        )
        picked_up = "by the running worker"
    except DrillFailed:
        picked_up = f"not within {QUEUED_WAIT_S:g} s by the running worker"
        row2 = deployment(pk2)
        details["state_after_wait"] = describe(row2)
        old = lab.worker()
        old.stop(grace=30)
        lab.system.start_worker()
        row2 = finished(pk2, 120)
        picked_up += "; by a worker started afterwards"
    asked = {
        "answer_s": round(answer_s, 2),
        "state_while_down": state_while_down,
        "picked_up": picked_up,
        "deployment": describe(row2),
    }
    details["when_asked"] = asked
    ok_running = row.state == "succeeded" and running["served"] and page.status_code == 200
    ok_asked = row2.state == "succeeded" and picked_up == "by the running worker"
    return Outcome(
        "redis-stopped",
        ok_running and ok_asked,
        f"broker stopped {BROKER_DOWN_S:g} s during the prepare step of a deployment (its page "
        f"answered HTTP {page.status_code} meanwhile), then started; broker stopped when a "
        f"disable was asked for: the request answered in {answer_s:.2f} s, the deployment "
        f"{state_while_down}; broker started: picked up {picked_up}",
        f"deployment {running['deployment']}; the disable {asked['deployment']}",
        f"request with broker down answered in {answer_s:.2f} s",
        details,
    )


# -- drill: the worker killed between steps ----------------------------------------------------


def drill_worker_killed(lab: Lab) -> Outcome:
    forget_model(lab)
    pk = request_deployment(lab)
    kills = []
    for after in ("verify", "install"):
        wait_for(
            f"the {after} step to end",
            lambda after=after: step_state(pk, after) in ("succeeded", "skipped"),
            DEPLOY_TIMEOUT_S,
        )
        worker = lab.worker()
        worker.kill()
        killed = time.monotonic()
        row = deployment(pk)
        running = [s.name for s in row.steps.all() if s.state == "running"]
        store_at_kill = stored_state(lab)
        lab.system.start_worker()  # resumes what the killed one left, once ready
        claims = row.attempts
        resumed = wait_for(
            "the resume",
            lambda c=claims: deployment(pk).attempts > c and time.monotonic(),
            120,
            0.1,
        )
        kills.append(
            {
                "after": after,
                "steps_running": running,
                "state_at_kill": row.state,
                "store_at_kill": store_at_kill,
                "resumed_in_s": round(resumed - killed, 1),
            }
        )
    row = finished(pk)
    store = stored_state(lab)
    served = serves(lab)
    registration: dict[str, Any] = {}
    with contextlib.suppress(InferenceError):
        registration = lab.system.sidecar.client.model(MODEL_URI)
    skipped = [s.name for s in row.steps.all() if s.state == "skipped"]
    passed = (
        row.state == "succeeded"
        and served
        and store.endswith("verifies)")
        and {"fetch", "prepare", "install"} <= set(skipped)
    )
    return Outcome(
        "worker-killed",
        passed,
        "SIGKILL to the worker "
        + "; ".join(
            f"after {k['after']} (running: {', '.join(k['steps_running']) or 'none'}; store: "
            f"{k['store_at_kill']}), a new worker resumed it in {k['resumed_in_s']} s"
            for k in kills
        ),
        f"deployment {describe(row)}; model {store}; "
        f"{'served' if served else 'NOT served'} ({registration.get('precision')} from "
        f"{registration.get('model_path')})",
        f"{row.attempts} claims, resumed in ≤ {max(k['resumed_in_s'] for k in kills)} s",
        {"kills": kills, "deployment": describe(row), "store": store, "served": served},
    )


# -- drill: the model store full or read-only --------------------------------------------------

MIB = 2**20


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _run(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True)


@contextlib.contextmanager
def small_store(models: Path, size: int, *, read_only: bool = False) -> Iterator[None]:
    """The model store moved onto a tmpfs of ``size`` bytes (read-only if asked), with the same
    files at the same paths; put back on its disk afterwards."""
    aside = models.with_name(models.name + "-on-disk")
    models.rename(aside)
    models.mkdir()
    try:
        _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=755", "tmpfs", str(models))
        try:
            shutil.copytree(aside, models, dirs_exist_ok=True, symlinks=True)
            if read_only:
                _run("mount", "-o", "remount,ro", str(models))
            yield
        finally:
            try:
                _run("umount", str(models))
            except subprocess.CalledProcessError:
                _run("umount", "-l", str(models))
    finally:
        models.rmdir()
        aside.rename(models)


def drill_store_full(lab: Lab) -> Outcome:
    if os.geteuid() != 0:
        return Outcome("store-full", None, "skipped: mounting a tmpfs needs root", "-", "-")
    ensure_served(lab)
    model_bytes = _tree_bytes(lab.models_dir)
    cases = {
        "no room to stage": (model_bytes + 16 * MIB, False),
        "room to stage, not for the int8 graph": (2 * model_bytes + 8 * MIB, False),
        "read-only": (model_bytes + 16 * MIB, True),
    }
    results = {}
    for case, (size, read_only) in cases.items():
        with small_store(lab.models_dir, size, read_only=read_only):
            pk = request_deployment(lab, precision="int8")
            row = finished(pk)
            stored = ModelStore(lab.models_dir).get(MODEL_URI)
            quality = ((stored.manifest.get("quality") or {}).get("int8") if stored else None) or {}
            results[case] = {
                "store_mib": round(size / MIB),
                "deployment": describe(row),
                "state": row.state,
                "error": row.error,
                "store": stored_state(lab),
                "int8_gate_recorded": quality,
                "served": serves(lab),
            }
        results[case]["served_after_umount"] = serves(lab)
    clean = {
        case: r["state"] == "failed"
        and f"the model store {lab.models_dir} cannot take" in r["error"]
        and r["store"] == "in the store (fp32, verifies)"
        and not r["int8_gate_recorded"]
        and r["served"]
        and r["served_after_umount"]
        for case, r in results.items()
    }
    return Outcome(
        "store-full",
        all(clean.values()),
        "an int8 deployment of the installed model with the store on a tmpfs: "
        + "; ".join(
            f"{case} ({r['store_mib']} MiB): {r['state']}, {r['error'] or 'no error'}"
            for case, r in results.items()
        ),
        "; ".join(
            f"{case}: model {r['store']}, {'served' if r['served'] else 'NOT served'}"
            + (f", int8 gate recorded {r['int8_gate_recorded']}" if r["int8_gate_recorded"] else "")
            for case, r in results.items()
        ),
        f"{sum(clean.values())}/{len(clean)} cases clean",
        results,
    )


# -- the run -----------------------------------------------------------------------------------

DRILLS: dict[str, Callable[[Lab], Outcome]] = {
    "sidecar-killed": drill_sidecar_killed,
    "sidecar-stalled": drill_sidecar_stalled,
    "server-restart-save": drill_server_restart_save,
    "redis-stopped": drill_redis_stopped,
    "worker-killed": drill_worker_killed,
    "store-full": drill_store_full,
}


def run_drills(names: list[str], stored_path: Path) -> list[Outcome]:
    broker_port = free_port()
    with bench_system("drills", REDIS_URL=f"redis://127.0.0.1:{broker_port}/0") as system:
        from django.contrib.auth.models import User
        from django.test import Client
        from django.test.utils import setup_test_environment

        broker = PrivateRedis(broker_port, system.base / "redis")
        broker.start()
        first_sidecar = system.sidecar
        try:
            system.start_worker()
            setup_test_environment()
            client = Client(raise_request_exception=False)
            client.force_login(User.objects.create_superuser("drills", password=None))
            lab = Lab(system, broker, client, stored_path)
            deploy_through_console(system, client, stored_path)
            prepare_database(system, DATABASE)
            outcomes = []
            for name in names:
                print(f"drill {name} ...", flush=True)
                started = time.monotonic()
                try:
                    outcome = DRILLS[name](lab)
                except (DrillFailed, psycopg.Error, InferenceError, OSError) as exc:
                    outcome = Outcome(name, False, f"the drill stopped: {exc}", "unknown", "-")
                outcome.details["seconds"] = round(time.monotonic() - started, 1)
                print(f"  {'PASS' if outcome.passed else 'FAIL'}: {outcome.ended}", flush=True)
                outcomes.append(outcome)
            return outcomes
        finally:
            broker.stop()
            if system.sidecar is not first_sidecar:  # restarted by a drill: not the system's
                system.sidecar.stop()


def report(outcomes: list[Outcome]) -> None:
    print(f"\n{'drill':<22}{'outcome':<9}{'seconds':>8}  figure")
    for o in outcomes:
        verdict = "skipped" if o.passed is None else ("pass" if o.passed else "FAIL")
        print(f"{o.drill:<22}{verdict:<9}{o.details.get('seconds', 0):>8}  {o.figure}")
    for o in outcomes:
        print(f"\n{o.drill}\n  what happened: {o.happened}\n  ended in: {o.ended}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated drills: " + ", ".join(DRILLS))
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(DRILLS)
    unknown = [n for n in names if n not in DRILLS]
    if unknown:
        parser.error(f"no drill {', '.join(unknown)}; the drills are {', '.join(DRILLS)}")

    out = var_dir() / "bench" / "drills.json"  # VAR_DIR moves into the system below
    load_start = os.getloadavg()
    stored = deployed_model(MODEL_URI)
    outcomes = run_drills(names, stored.path)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "model": MODEL_URI,
        "machine": machine(),
        "load_average_at_start": load_start,
        "busy": busy(load_start),
        "drills": [o.__dict__ for o in outcomes],
    }
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    report(outcomes)
    print(f"\nwritten to {out}")
    return 0 if all(o.passed is not False for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
