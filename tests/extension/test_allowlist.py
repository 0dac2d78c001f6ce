"""azure.extensions: CREATE EXTENSION only for listed extensions, case-insensitively, for every
role, dependencies created by CASCADE included."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import errors, sql

from serverparams.server import ManagedServer, pg_config_path
from tests.fixtures.pg import allow_extensions

DB = "allowlist_tests"


@pytest.fixture
def db(managed_pg: ManagedServer, ext_db: str) -> Iterator[psycopg.Connection]:
    """A fresh database; azure.extensions is restored afterwards."""
    with managed_pg.connect() as admin:
        previous = admin.execute("SHOW azure.extensions").fetchone()[0]
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(DB)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
        try:
            with managed_pg.connect(DB) as conn:
                yield conn
        finally:
            allow_extensions(admin, *previous.split(","))
            admin.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(DB)))


def test_parameter_is_a_reloadable_server_parameter(db: psycopg.Connection) -> None:
    allow_extensions(db)
    assert db.execute("SHOW azure.extensions").fetchone() == ("",)
    assert db.execute(
        "SELECT context, vartype FROM pg_settings WHERE name = 'azure.extensions'"
    ).fetchone() == ("sighup", "string")


def test_unlisted_extension_is_refused_with_a_hint(db: psycopg.Connection) -> None:
    allow_extensions(db, "azure_local_ai")
    assert db.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (
        True,
    )  # the list binds superusers too
    with pytest.raises(errors.InsufficientPrivilege) as info:
        db.execute("CREATE EXTENSION vector")
    assert '"vector"' in info.value.diag.message_primary
    hint = info.value.diag.message_hint
    assert "VECTOR" in hint
    assert "Server parameters" in hint
    assert "SHOW azure.extensions" in hint
    assert db.execute("SELECT count(*) FROM pg_extension WHERE extname = 'vector'").fetchone() == (
        0,
    )


def test_listed_extension_is_created(db: psycopg.Connection) -> None:
    allow_extensions(db, "vector")
    db.execute("CREATE EXTENSION vector")
    assert db.execute("SELECT '[1,2]'::vector <-> '[1,3]'::vector").fetchone() == (1.0,)


@pytest.mark.parametrize(
    "listed", ["VECTOR", " Vector , AZURE_LOCAL_AI ", '"vector"', ", ,\tvector,,"]
)
def test_matching_ignores_case_spaces_quotes_and_empty_entries(
    db: psycopg.Connection, listed: str
) -> None:
    allow_extensions(db, listed)
    db.execute("CREATE EXTENSION vector")
    assert db.execute("SELECT count(*) FROM pg_extension WHERE extname = 'vector'").fetchone() == (
        1,
    )


def test_if_not_exists_on_an_existing_extension_needs_no_listing(db: psycopg.Connection) -> None:
    allow_extensions(db, "vector")
    db.execute("CREATE EXTENSION vector")
    allow_extensions(db)
    db.execute("CREATE EXTENSION IF NOT EXISTS vector")  # creates nothing, refuses nothing
    with pytest.raises(errors.InsufficientPrivilege):
        db.execute("CREATE EXTENSION IF NOT EXISTS azure_local_ai")


@pytest.fixture
def dependent_extension() -> Iterator[str]:
    """An extension that requires vector, installed only for the length of one test."""
    sharedir = Path(
        subprocess.run(
            [str(pg_config_path()), "--sharedir"], check=True, capture_output=True, text=True
        ).stdout.strip()
    )
    name = f"alai_probe_{uuid.uuid4().hex[:8]}"
    control = sharedir / "extension" / f"{name}.control"
    script = sharedir / "extension" / f"{name}--1.0.sql"
    control.write_text(
        "comment = 'test probe'\ndefault_version = '1.0'\nrequires = 'vector'\nrelocatable = true\n"
    )
    script.write_text(f"CREATE FUNCTION {name}() RETURNS int LANGUAGE sql AS 'SELECT 1';\n")
    try:
        yield name
    finally:
        control.unlink()
        script.unlink()


def test_cascade_dependencies_must_be_listed_too(
    db: psycopg.Connection, dependent_extension: str
) -> None:
    allow_extensions(db, dependent_extension)
    with pytest.raises(errors.InsufficientPrivilege) as info:
        db.execute(
            sql.SQL("CREATE EXTENSION {} CASCADE").format(sql.Identifier(dependent_extension))
        )
    assert '"vector"' in info.value.diag.message_primary
    allow_extensions(db, dependent_extension, "vector")
    db.execute(sql.SQL("CREATE EXTENSION {} CASCADE").format(sql.Identifier(dependent_extension)))
    assert db.execute(
        "SELECT count(*) FROM pg_extension WHERE extname IN ('vector', %s)", [dependent_extension]
    ).fetchone() == (2,)
    db.execute(sql.SQL("DROP EXTENSION {}").format(sql.Identifier(dependent_extension)))
