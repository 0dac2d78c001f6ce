"""Fixtures of the extension tests: a database with the extensions created, a fresh database,
roles, and helpers to point the module at another service for the length of a test."""

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
FRESH_DB = "ext_fresh_tests"


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


@pytest.fixture
def db(managed_pg: ManagedServer, ext_db: str) -> Iterator[psycopg.Connection]:
    """A superuser session in a fresh database without extensions; azure.extensions is restored
    afterwards."""
    with managed_pg.connect() as admin:
        previous = admin.execute("SHOW azure.extensions").fetchone()[0]
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(FRESH_DB)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(FRESH_DB)))
        try:
            with managed_pg.connect(FRESH_DB) as conn:
                yield conn
        finally:
            allow_extensions(admin, *previous.split(","))
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(FRESH_DB)))


def connect_as(managed_pg: ManagedServer, dbname: str, role: str) -> psycopg.Connection:
    """A session of role (a LOGIN role without password: the test server trusts local
    connections)."""
    uri = managed_pg.uri(dbname).replace("postgres@", f"{role}@", 1)
    return psycopg.connect(uri, autocommit=True)


@contextmanager
def login_roles(conn: psycopg.Connection, *specs: str) -> Iterator[None]:
    """Create LOGIN roles for a test, e.g. ``login_roles(conn, "mallory CREATEROLE")``; they
    are dropped afterwards with whatever they own or were granted in conn's database."""
    names = [spec.split()[0] for spec in specs]
    for spec in specs:
        name, *options = spec.split()
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN " + " ".join(options)).format(sql.Identifier(name))
        )
    try:
        yield
    finally:
        for name in names:
            conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
        for name in names:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@contextmanager
def fresh_db_owned_by(conn: psycopg.Connection, role: str) -> Iterator[None]:
    """FRESH_DB owned, for the block, by ``role``: a LOGIN role created for it (and dropped
    after with what it owns); postgres owns the database again afterwards."""
    owner = sql.SQL("ALTER DATABASE {} OWNER TO {}")
    with login_roles(conn, role):
        conn.execute(owner.format(sql.Identifier(FRESH_DB), sql.Identifier(role)))
        try:
            yield
        finally:
            conn.execute(owner.format(sql.Identifier(FRESH_DB), sql.Identifier("postgres")))


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
