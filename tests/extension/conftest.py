"""Fixtures of the extension tests: a database with the extensions created, and helpers to
point the module at another service for the length of a test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql

from serverparams.server import ManagedServer
from tests.fixtures.pg import allow_extensions, set_parameter, wait_for_setting

TINY_URI = "tiny:v1"
TINY_DIMS = 32
EXT_DB = "ext_tests"


@pytest.fixture(scope="session")
def ext_db(managed_pg: ManagedServer) -> str:
    """A database with vector and azure_local_ai created (and allowed)."""
    with managed_pg.connect() as conn:
        allow_extensions(conn, "vector", "azure_local_ai")
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(EXT_DB)))
    with managed_pg.connect(EXT_DB) as conn:
        conn.execute("CREATE EXTENSION vector")
        conn.execute("CREATE EXTENSION azure_local_ai")
    return EXT_DB


@pytest.fixture
def conn(managed_pg: ManagedServer, ext_db: str) -> Iterator[psycopg.Connection]:
    """A superuser session in the extension database."""
    with managed_pg.connect(ext_db) as connection:
        yield connection


@contextmanager
def service_url(conn: psycopg.Connection, url: str) -> Iterator[None]:
    """Point azure_local_ai.service_url (a reloadable server parameter) at url for a while."""
    previous = conn.execute("SHOW azure_local_ai.service_url").fetchone()[0]
    set_parameter(conn, "azure_local_ai.service_url", url)
    try:
        yield
    finally:
        conn.execute("ALTER SYSTEM RESET azure_local_ai.service_url")
        conn.execute("SELECT pg_reload_conf()")
        wait_for_setting(conn, "azure_local_ai.service_url", previous)
