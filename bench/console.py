"""Server parameters blade latency, and the queries each request costs.

Renders the blade in-process (Django's test client, signed in as an admin, a throwaway
console database) against the managed server the environment names (``VAR_DIR``,
``MANAGED_PG_PORT`` or ``MANAGED_DATABASE_URL``; start the embedded one with
``manage.py server start``). Two request kinds, 50 each after a warm-up: the full list
(``/parameters/``) and an htmx search (``/parameters/?q=...``). Counts the statements sent
to the managed server and to the console database per request: the managed-server count is
the same for the full list and a search, whatever the number of parameters.

The playground section (skip it with ``--skip-playground``) starts a sidecar serving
all-MiniLM-L6-v2 (from the model store, deployed from its package if missing) and points the
console and, for the run, the managed server's ``azure_local_ai.service_url`` at it (with
VECTOR and AZURE_LOCAL_AI allowed; both parameters are put back afterwards). It times the
playground embedding 10 texts (server time per request, and the share of it spent outside
the sidecar), creates the search demo's sample table if it is not there with this model, and
times demo queries through SQL.

Usage: ``.venv/bin/python bench/console.py [--requests N] [--skip-playground]``.
Prints a table and writes ``VAR_DIR/bench/console.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

import django

django.setup()

import psutil  # noqa: E402
import psycopg  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext, setup_test_environment  # noqa: E402
from psycopg import sql  # noqa: E402

from bench.sql import deployed_model  # noqa: E402
from console.playground import demo  # noqa: E402
from inference.client import InferenceClient  # noqa: E402
from inference.config import var_dir  # noqa: E402
from inference.process import start_sidecar  # noqa: E402
from serverparams.apply import auto_conf, write_back  # noqa: E402
from serverparams.server import ServerError, get_managed_server  # noqa: E402

HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "param-results"}


class StatementCounter:
    """Counts statements sent to the managed server (every psycopg execute in this process)."""

    def __init__(self) -> None:
        self.count = 0
        self._original = psycopg.Connection.execute

    def __enter__(self) -> StatementCounter:
        original = self._original
        counter = self

        def counting(conn: psycopg.Connection, *args: Any, **kwargs: Any) -> Any:
            counter.count += 1
            return original(conn, *args, **kwargs)

        psycopg.Connection.execute = counting  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        psycopg.Connection.execute = self._original  # type: ignore[method-assign]


def measure(client: Client, url: str, params: dict[str, str], headers: dict[str, str], n: int):  # type: ignore[no-untyped-def]
    for _ in range(3):  # warm-up: templates compiled, connections made
        assert client.get(url, params, **headers).status_code == 200
    timings = []
    for _ in range(n):
        start = time.perf_counter()
        response = client.get(url, params, **headers)
        timings.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, response.status_code
    with StatementCounter() as managed, CaptureQueriesContext(connection) as console_db:
        client.get(url, params, **headers)
    return timings, managed.count, len(console_db.captured_queries)


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--skip-playground", action="store_true")
    args = parser.parse_args()

    server = get_managed_server()
    try:
        with server.connect() as conn:
            row = conn.execute(
                "SELECT count(*), current_setting('server_version') FROM pg_settings"
            )
            parameters, version = row.fetchone()  # type: ignore[misc]
    except ServerError as exc:
        sys.exit(f"{exc}")

    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0)
    try:
        client = Client()
        client.force_login(User.objects.create_superuser("bench", password=None))
        blade, blade_statements, blade_db = measure(client, "/parameters/", {}, {}, args.requests)
        search, search_statements, search_db = measure(
            client, "/parameters/", {"q": "mem"}, HTMX, args.requests
        )
        playground = None if args.skip_playground else measure_playground(client, args.requests)
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)

    result = {
        "blade_p95_ms": round(p95(blade), 2),
        "blade_median_ms": round(statistics.median(blade), 2),
        "search_p95_ms": round(p95(search), 2),
        "search_median_ms": round(statistics.median(search), 2),
        "requests": args.requests,
        "parameters": parameters,
        "managed_server_queries": {"blade": blade_statements, "search": search_statements},
        "console_db_queries": {"blade": blade_db, "search": search_db},
        "server_version": version,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": psutil.cpu_count(logical=True),
            "memory_mb": psutil.virtual_memory().total // (1024 * 1024),
            "python": platform.python_version(),
        },
    }
    if playground is not None:
        result["playground"] = playground
    print(f"PostgreSQL {version}, {parameters} parameters, {args.requests} requests each")
    print(f"{'request':<24}{'median ms':>12}{'p95 ms':>10}{'server q':>10}{'console q':>11}")
    for label, key in (("full list", "blade"), ("search (htmx)", "search")):
        print(
            f"{label:<24}{result[f'{key}_median_ms']:>12}{result[f'{key}_p95_ms']:>10}"
            f"{result['managed_server_queries'][key]:>10}{result['console_db_queries'][key]:>11}"
        )
    if playground is not None:
        print_playground(playground)
    out = Path(settings.VAR_DIR) / "bench" / "console.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


# -- Playground: server time to embed 10 texts, and the search demo's SQL ---------------------

PLAYGROUND_MODEL = "all-MiniLM-L6-v2:v1"
PLAYGROUND_TEXTS = 10
# Demo queries, several languages; each request embeds its query again in SQL.
PLAYGROUND_QUERIES = [
    "how do I keep bread fresh",
    "why is the sky red on Mars",
    "wie lange schlafen Katzen",
    "comment préparer des crêpes",
    "cuánto dura un partido de fútbol",
    "database index makes writes slower",
    "パンを長持ちさせる方法",
    "сколько клавиш у пианино",  # noqa: RUF001
    "saving money for emergencies",
    "birds find their way at night",
]


@contextlib.contextmanager
def playground_sidecar(uri: str) -> Iterator[None]:
    """While the block runs, a sidecar of its own serves ``uri`` to the console and to the
    managed server's azure_local_ai, with VECTOR and AZURE_LOCAL_AI allowed."""
    stored = deployed_model(uri)
    sidecar = start_sidecar(var_dir() / "bench" / "console-sidecar")
    server = get_managed_server()
    changed = ("azure_local_ai.service_url", "azure.extensions")
    previous = settings.INFERENCE_URL, settings.INFERENCE_TOKEN
    with server.connect() as conn:
        snapshot = auto_conf(conn)
    try:
        sidecar.client.register(uri, str(stored.path))
        with server.connect() as conn:
            shown = conn.execute("SHOW azure.extensions").fetchone()
            allowed = {name.strip() for name in (shown[0] if shown else "").split(",")}
            allowed = sorted((allowed - {""}) | {"vector", "azure_local_ai"})
            for name, value in zip(changed, (sidecar.url, ",".join(allowed)), strict=True):
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET {} = {}").format(
                        sql.Identifier(*name.split(".")), sql.Literal(value)
                    )
                )
            conn.execute("SELECT pg_reload_conf()")
        settings.INFERENCE_URL, settings.INFERENCE_TOKEN = sidecar.url, ""
        yield
    finally:
        settings.INFERENCE_URL, settings.INFERENCE_TOKEN = previous
        with server.connect() as conn:
            write_back(conn, snapshot, changed)
            conn.execute("SELECT pg_reload_conf()")
        sidecar.stop()


def measure_playground(client: Client, n: int) -> dict[str, Any]:
    embed_url, search_url = "/playground/embed/", "/playground/demo/search/"
    htmx = {"HTTP_HX_REQUEST": "true"}
    documents = demo.samples().documents
    # Ten sample documents from across the file: several languages and lengths.
    texts = [d.text for d in documents[:: len(documents) // PLAYGROUND_TEXTS]][:PLAYGROUND_TEXTS]
    form = {"model": PLAYGROUND_MODEL, "input_type": "none", "texts": "\n".join(texts)}
    with playground_sidecar(PLAYGROUND_MODEL):
        with InferenceClient(settings.INFERENCE_URL, "") as sidecar:
            facts = sidecar.model_facts_of(PLAYGROUND_MODEL)
        start = time.perf_counter()
        setup = demo.setup(facts)  # kept as it is when already made with this model
        setup_s = time.perf_counter() - start
        for _ in range(3):  # warm-up
            assert client.post(embed_url, form, **htmx).status_code == 200
            assert client.get(search_url, {"q": "warm up"}, **htmx).status_code == 200
        totals, outside = [], []
        for _ in range(n):
            start = time.perf_counter()
            response = client.post(embed_url, form, **htmx)
            total = (time.perf_counter() - start) * 1000
            assert response.status_code == 200, response.status_code
            sidecar_ms = response.context["embedding"].sidecar_ms
            assert sidecar_ms is not None, "the sidecar sent no X-Process-Time-Ms"
            totals.append(total)
            outside.append((total - sidecar_ms) / total)
        sql_times, search_totals = [], []
        for i in range(n):
            query = PLAYGROUND_QUERIES[i % len(PLAYGROUND_QUERIES)]
            start = time.perf_counter()
            response = client.get(search_url, {"q": query, "k": demo.DEFAULT_K}, **htmx)
            search_totals.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200, response.status_code
            sql_times.append(response.context["search"].elapsed_ms)
    return {
        "model": PLAYGROUND_MODEL,
        "texts": len(texts),
        "requests": n,
        "embed_median_ms": round(statistics.median(totals), 2),
        "embed_p95_ms": round(p95(totals), 2),
        "embed_outside_sidecar_share": round(statistics.median(outside), 3),
        "search_sql_median_ms": round(statistics.median(sql_times), 2),
        "search_request_median_ms": round(statistics.median(search_totals), 2),
        "sample_documents": setup.table.documents,
        "sample_setup_s": round(setup_s, 2) if setup.created else None,
    }


def print_playground(figures: dict[str, Any]) -> None:
    print(f"playground with {figures['model']}, {figures['requests']} requests each")
    print(f"{'request':<36}{'median ms':>12}{'p95 ms':>10}")
    print(
        f"{'embed ' + str(figures['texts']) + ' texts (htmx)':<36}"
        f"{figures['embed_median_ms']:>12}{figures['embed_p95_ms']:>10}"
        f"   {figures['embed_outside_sidecar_share']:.0%} outside the sidecar"
    )
    print(f"{'search demo query, SQL statement':<36}{figures['search_sql_median_ms']:>12}")
    print(f"{'search demo query, whole request':<36}{figures['search_request_median_ms']:>12}")
    if figures["sample_setup_s"] is not None:
        print(
            f"sample table: {figures['sample_documents']} documents embedded in SQL and indexed"
            f" in {figures['sample_setup_s']} s"
        )


if __name__ == "__main__":
    main()
