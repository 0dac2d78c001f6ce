"""A managed server for the console's tests (pytest-django and browser tests), and a console
database that refuses writes."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from serverparams.apply import auto_conf, write_back
from serverparams.server import ManagedServer
from tests.fixtures.pg import free_port, install_module

# Nothing listens here: the console's tests never embed, and the sidecar has tests of its own.
UNUSED_SIDECAR_URL = "http://127.0.0.1:9"


@contextlib.contextmanager
def running_server() -> Iterator[ManagedServer]:
    """A real managed PostgreSQL 16 with the azure_local_ai module preloaded.

    Its directory is not under pytest's basetemp: every pytest session that starts resets
    /tmp/pytest-of-<user> to mode 0700, which would lock out the server's own system user
    (when running as root) in the middle of this session's tests.
    """
    install_module()
    var_dir = Path(tempfile.mkdtemp(prefix="pglocalai-console-"))
    server = ManagedServer(var_dir=var_dir, port=free_port(), service_url=UNUSED_SIDECAR_URL)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(var_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def console_pg() -> Iterator[ManagedServer]:
    """The session's managed server for the console's tests."""
    with running_server() as server:
        yield server


def restore_auto_conf(conn: psycopg.Connection, snapshot: dict[str, str]) -> None:
    """Put postgresql.auto.conf back as ``auto_conf`` read it, so later tests see the server
    unchanged."""
    current = auto_conf(conn)
    changed = [
        name for name in current.keys() | snapshot.keys() if current.get(name) != snapshot.get(name)
    ]
    write_back(conn, snapshot, changed)
    conn.execute("SELECT pg_reload_conf()")


def show(server: ManagedServer, name: str) -> str:
    """The value of ``name`` a new session sees."""
    with server.connect() as conn:
        row = conn.execute(f"SHOW {name}").fetchone()
    assert row is not None
    return row[0]


@contextlib.contextmanager
def read_only_console_db() -> Iterator[None]:
    """The console's own database refuses every write (reads still work) while this lasts.

    SQLite's ``query_only`` makes the test database itself refuse writes, on the connection
    the code under test uses (the test's, in a pytest-django test)."""
    if connection.vendor != "sqlite":
        pytest.skip("makes the console's SQLite database read-only")
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA query_only = ON")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA query_only = OFF")
