"""A managed server for the console's tests (pytest-django and browser tests)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

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


AUTO_CONF_QUERY = """
SELECT name, setting FROM pg_file_settings
WHERE sourcefile LIKE '%postgresql.auto.conf' ORDER BY seqno
"""


def auto_conf(conn: psycopg.Connection) -> dict[str, str]:
    """What ALTER SYSTEM has written so far (postgresql.auto.conf), by lower-case name."""
    return {name.lower(): setting for name, setting in conn.execute(AUTO_CONF_QUERY).fetchall()}


def restore_auto_conf(conn: psycopg.Connection, snapshot: dict[str, str]) -> None:
    """Put postgresql.auto.conf back as it was, so later tests see the server unchanged."""
    for name, value in auto_conf(conn).items():
        identifier = sql.Identifier(*name.split("."))
        if name not in snapshot:
            conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(identifier))
        elif snapshot[name] != value:
            conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(identifier, sql.Literal(snapshot[name]))
            )
    conn.execute("SELECT pg_reload_conf()")
