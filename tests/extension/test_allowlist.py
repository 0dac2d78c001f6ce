"""azure.extensions: CREATE EXTENSION only for listed extensions, case-insensitively, for every
role, dependencies created by CASCADE included; ALTER EXTENSION ... UPDATE only for listed ones;
and no session can change the list or load the module's library by itself."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import errors, sql

from serverparams.server import ManagedServer, pg_config_path
from tests.extension.conftest import FRESH_DB, connect_as, login_roles
from tests.fixtures.pg import allow_extensions


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


@contextmanager
def probe_extension(control: str, scripts: dict[str, str]) -> Iterator[str]:
    """An extension installed into the server's share directory for the length of a test.

    control: the control file's lines; scripts: file name suffix (``1.0``, ``1.0--1.1``) to
    script. Yields the extension's name (a fresh one)."""
    sharedir = Path(
        subprocess.run(
            [str(pg_config_path()), "--sharedir"], check=True, capture_output=True, text=True
        ).stdout.strip()
    )
    name = f"alai_probe_{uuid.uuid4().hex[:8]}"
    files = [sharedir / "extension" / f"{name}.control"]
    files[0].write_text(control)
    for suffix, script in scripts.items():
        files.append(sharedir / "extension" / f"{name}--{suffix}.sql")
        files[-1].write_text(script.format(name=name))
    try:
        yield name
    finally:
        for path in files:
            path.unlink()


@pytest.fixture
def dependent_extension() -> Iterator[str]:
    """An extension that requires vector."""
    with probe_extension(
        "default_version = '1.0'\nrequires = 'vector'\nrelocatable = true\n",
        {"1.0": "CREATE FUNCTION {name}() RETURNS int LANGUAGE sql AS 'SELECT 1';\n"},
    ) as name:
        yield name


@pytest.fixture
def updatable_extension() -> Iterator[str]:
    """An extension at version 1.0 with an update to 1.1 (which changes what its function
    answers)."""
    with probe_extension(
        "default_version = '1.0'\nrelocatable = true\n",
        {
            "1.0": "CREATE FUNCTION {name}() RETURNS int LANGUAGE sql AS 'SELECT 10';\n",
            "1.0--1.1": "CREATE OR REPLACE FUNCTION {name}() RETURNS int LANGUAGE sql"
            " AS 'SELECT 11';\n",
        },
    ) as name:
        yield name


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


def test_update_of_an_extension_taken_off_the_list_is_refused(
    db: psycopg.Connection, updatable_extension: str
) -> None:
    name = sql.Identifier(updatable_extension)
    call = sql.SQL("SELECT {}()").format(name)
    allow_extensions(db, updatable_extension)
    db.execute(sql.SQL("CREATE EXTENSION {}").format(name))
    allow_extensions(db, "vector")
    for statement in ("ALTER EXTENSION {} UPDATE", "ALTER EXTENSION {} UPDATE TO '1.1'"):
        with pytest.raises(errors.InsufficientPrivilege) as info:
            db.execute(sql.SQL(statement).format(name))
        assert info.value.diag.message_primary == (
            f'extension "{updatable_extension}" is not allow-listed for this server, so it '
            "cannot be updated"
        )
    # still there, at its version, usable and removable
    assert db.execute(
        "SELECT extversion FROM pg_extension WHERE extname = %s", [updatable_extension]
    ).fetchone() == ("1.0",)
    assert db.execute(call).fetchone() == (10,)
    allow_extensions(db, updatable_extension.upper())
    db.execute(sql.SQL("ALTER EXTENSION {} UPDATE TO '1.1'").format(name))
    assert db.execute(call).fetchone() == (11,)
    allow_extensions(db)
    db.execute(sql.SQL("DROP EXTENSION {}").format(name))


@pytest.mark.parametrize(
    ("statement", "sqlstate"),
    [
        ('CREATE EXTENSION "VECTOR"', "42501"),
        ("CREATE EXTENSION Vector", "42501"),  # folded to vector
        ('CREATE EXTENSION " vector"', "42501"),
        ('CREATE EXTENSION "vector "', "42501"),
        ("CREATE EXTENSION IF NOT EXISTS Vector", "42501"),
        ("CREATE EXTENSION public.vector", "42601"),  # extension names are not qualified
        ('CREATE EXTENSION "public.vector"', "42501"),
    ],
)
def test_other_spellings_of_an_unlisted_name_are_refused(
    db: psycopg.Connection, statement: str, sqlstate: str
) -> None:
    allow_extensions(db, "azure_local_ai")
    with pytest.raises(psycopg.Error) as info:
        db.execute(statement)
    assert info.value.sqlstate == sqlstate
    assert db.execute(
        "SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql'"
    ).fetchone() == (0,)


def test_a_listed_name_in_another_case_allows_only_the_installed_extension(
    db: psycopg.Connection,
) -> None:
    # Matching ignores case; PostgreSQL itself does not: "VECTOR" is no installed extension.
    allow_extensions(db, "VECTOR")
    with pytest.raises(errors.FeatureNotSupported, match="not available"):
        db.execute('CREATE EXTENSION "VECTOR"')
    db.execute("CREATE EXTENSION Vector")
    assert db.execute("SELECT extname FROM pg_extension WHERE extname <> 'plpgsql'").fetchall() == [
        ("vector",)
    ]


@pytest.fixture
def user_db(managed_pg: ManagedServer, db: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """A session of a plain role that owns the fresh database."""
    owner = sql.SQL("ALTER DATABASE {} OWNER TO {}")
    with login_roles(db, "alai_owner"):
        db.execute(owner.format(sql.Identifier(FRESH_DB), sql.Identifier("alai_owner")))
        try:
            with connect_as(managed_pg, FRESH_DB, "alai_owner") as user:
                yield user
        finally:
            db.execute(owner.format(sql.Identifier(FRESH_DB), sql.Identifier("postgres")))


@pytest.mark.parametrize(
    "statement",
    [
        "SET azure.extensions = 'plpgsql'",
        "SELECT set_config('azure.extensions', 'plpgsql', false)",
        "ALTER ROLE alai_owner SET azure.extensions = 'plpgsql'",
        f"ALTER DATABASE {FRESH_DB} SET azure.extensions = 'plpgsql'",
        "ALTER SYSTEM SET azure.extensions = 'plpgsql'",
    ],
)
def test_a_session_cannot_change_the_list(user_db: psycopg.Connection, statement: str) -> None:
    before = user_db.execute("SHOW azure.extensions").fetchone()
    with pytest.raises(psycopg.Error) as info:
        user_db.execute(statement)
    # 55P02: a server parameter (sighup), changed only in the configuration; 42501: ALTER SYSTEM
    assert info.value.sqlstate in {"55P02", "42501"}
    assert user_db.execute("SHOW azure.extensions").fetchone() == before


def test_the_list_cannot_be_set_when_connecting(
    managed_pg: ManagedServer, db: psycopg.Connection
) -> None:
    with login_roles(db, "alai_owner"):
        uri = managed_pg.uri(db.info.dbname).replace("postgres@", "alai_owner@", 1)
        with pytest.raises(psycopg.OperationalError, match="cannot be changed now"):
            psycopg.connect(uri, options="-c azure.extensions=vector").close()


@pytest.mark.parametrize(
    "library",
    [
        "azure_local_ai",
        "$libdir/azure_local_ai",
        "$libdir/plugins/../azure_local_ai",
        "vector",
        "plpgsql",
    ],
)
def test_only_superusers_load_libraries(user_db: psycopg.Connection, library: str) -> None:
    with pytest.raises(errors.InsufficientPrivilege, match="is not allowed"):
        user_db.execute(sql.SQL("LOAD {}").format(sql.Literal(library)))


def test_loading_the_module_again_leaves_the_list_in_force(db: psycopg.Connection) -> None:
    allow_extensions(db, "azure_local_ai")
    db.execute("LOAD 'azure_local_ai'")  # preloaded: nothing happens
    db.execute("LOAD '$libdir/azure_local_ai'")
    with pytest.raises(errors.InsufficientPrivilege):
        db.execute("CREATE EXTENSION vector")


def test_non_superusers_need_a_listed_and_trusted_extension(
    db: psycopg.Connection, user_db: psycopg.Connection
) -> None:
    # The list comes first, for every role; then PostgreSQL's own rule: a trusted extension
    # needs CREATE on the database, any other one a superuser. azure_pg_admin adds nothing.
    db.execute("GRANT azure_pg_admin TO alai_owner")
    allow_extensions(db, "vector")
    with pytest.raises(errors.InsufficientPrivilege) as info:
        user_db.execute("CREATE EXTENSION azure_local_ai")
    assert "not allow-listed" in info.value.diag.message_primary
    allow_extensions(db, "azure_local_ai", "vector")
    user_db.execute("CREATE EXTENSION azure_local_ai")  # trusted
    with pytest.raises(errors.InsufficientPrivilege) as info:
        user_db.execute("CREATE EXTENSION vector")  # listed, but not trusted
    assert "permission denied to create extension" in info.value.diag.message_primary
