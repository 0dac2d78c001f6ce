"""Server parameters blade latency, and the queries each request costs.

Renders the blade in-process (Django's test client, signed in as an admin, a throwaway
console database) against the managed server the environment names (``VAR_DIR``,
``MANAGED_PG_PORT`` or ``MANAGED_DATABASE_URL``; start the embedded one with
``manage.py server start``). Two request kinds, 50 each after a warm-up: the full list
(``/parameters/``) and an htmx search (``/parameters/?q=...``). Counts the statements sent
to the managed server and to the console database per request: the managed-server count is
the same for the full list and a search, whatever the number of parameters.

Usage: ``.venv/bin/python bench/console.py [--requests N]``.
Prints a table and writes ``VAR_DIR/bench/console.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
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
    print(f"PostgreSQL {version}, {parameters} parameters, {args.requests} requests each")
    print(f"{'request':<24}{'median ms':>12}{'p95 ms':>10}{'server q':>10}{'console q':>11}")
    for label, key in (("full list", "blade"), ("search (htmx)", "search")):
        print(
            f"{label:<24}{result[f'{key}_median_ms']:>12}{result[f'{key}_p95_ms']:>10}"
            f"{result['managed_server_queries'][key]:>10}{result['console_db_queries'][key]:>11}"
        )
    out = Path(settings.VAR_DIR) / "bench" / "console.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
