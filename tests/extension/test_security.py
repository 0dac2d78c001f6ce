"""What CREATE EXTENSION azure_local_ai trusts, and what a caller's search_path can do.

* The administration roles: one that exists beforehand is used only when no one but superusers
  controls it.
* The schema azure_local_ai: it ends up owned by a superuser with USAGE for everyone and nothing
  else, so no one can put look-alike overloads beside the functions; one that already holds
  objects is refused.
* search_path: objects a role puts first in a search_path, or in pg_temp, change nothing the
  functions or the install script do.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors, sql

from serverparams.server import ManagedServer
from tests.extension.conftest import (
    FRESH_DB,
    TINY_URI,
    connect_as,
    fresh_db_owned_by,
    login_roles,
)
from tests.fixtures.pg import allow_extensions

ADMIN_ROLES = ("azure_pg_admin", "azure_local_ai_setting_manager")


@pytest.fixture
def no_admin_roles(db: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """The fresh database, azure_local_ai allowed, and the administration roles dropped for the
    test; afterwards they exist again as the extension creates them."""
    allow_extensions(db, "azure_local_ai")
    for role in ADMIN_ROLES:
        db.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    try:
        yield db
    finally:
        for role in ADMIN_ROLES:
            db.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
            db.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))


def extension_exists(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'azure_local_ai'")
    return row.fetchone() == (1,)


# -- the administration roles ------------------------------------------------------------------


def test_a_role_made_beforehand_by_a_non_superuser_is_refused(
    managed_pg: ManagedServer, no_admin_roles: psycopg.Connection
) -> None:
    db = no_admin_roles
    with login_roles(db, "mallory CREATEROLE", "accomplice"):
        # A CREATEROLE role makes the role first: it holds ADMIN OPTION on it, so it could
        # hand out the administration of the sidecar to anyone.
        with connect_as(managed_pg, FRESH_DB, "mallory") as mallory:
            mallory.execute("CREATE ROLE azure_local_ai_setting_manager")
            mallory.execute("GRANT azure_local_ai_setting_manager TO accomplice")
        with pytest.raises(errors.ObjectNotInPrerequisiteState) as info:
            db.execute("CREATE EXTENSION azure_local_ai")
        diag = info.value.diag
        assert diag.message_primary == (
            'role "azure_local_ai_setting_manager" already exists and is not safe to '
            "administer azure_local_ai"
        )
        assert "non-superusers hold ADMIN OPTION on it (mallory)" in diag.message_detail
        fix = "REVOKE ADMIN OPTION FOR azure_local_ai_setting_manager FROM mallory CASCADE"
        assert fix in diag.message_hint
        assert not extension_exists(db)

        db.execute(fix)  # what the hint says
        db.execute("CREATE EXTENSION azure_local_ai")
        assert extension_exists(db)
        # the membership mallory handed out went with her ADMIN OPTION
        assert db.execute(
            "SELECT pg_has_role('accomplice', 'azure_local_ai_setting_manager', 'USAGE')"
        ).fetchone() == (False,)
        with (
            connect_as(managed_pg, FRESH_DB, "mallory") as mallory,
            pytest.raises(errors.InsufficientPrivilege),
        ):
            mallory.execute("GRANT azure_local_ai_setting_manager TO accomplice")
        db.execute("DROP EXTENSION azure_local_ai")


def test_a_role_that_can_log_in_is_refused(no_admin_roles: psycopg.Connection) -> None:
    db = no_admin_roles
    db.execute("CREATE ROLE azure_pg_admin LOGIN")
    with pytest.raises(errors.ObjectNotInPrerequisiteState) as info:
        db.execute("CREATE EXTENSION azure_local_ai")
    assert '"azure_pg_admin"' in info.value.diag.message_primary
    assert "it can log in" in info.value.diag.message_detail
    assert "ALTER ROLE azure_pg_admin NOLOGIN" in info.value.diag.message_hint
    assert not extension_exists(db)
    db.execute("ALTER ROLE azure_pg_admin NOLOGIN")
    db.execute("CREATE EXTENSION azure_local_ai")
    assert extension_exists(db)
    db.execute("DROP EXTENSION azure_local_ai")


def test_roles_kept_from_an_earlier_install_are_used_as_they_are(
    no_admin_roles: psycopg.Connection,
) -> None:
    db = no_admin_roles
    with login_roles(db, "alai_member"):
        db.execute("CREATE EXTENSION azure_local_ai")  # creates both roles
        db.execute("GRANT azure_local_ai_setting_manager TO alai_member")
        db.execute("DROP EXTENSION azure_local_ai")  # the roles stay
        db.execute("CREATE EXTENSION azure_local_ai")
        assert db.execute(
            "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY(%s) ORDER BY 1",
            [list(ADMIN_ROLES)],
        ).fetchall() == [("azure_local_ai_setting_manager", False), ("azure_pg_admin", False)]
        assert db.execute(
            "SELECT pg_has_role('alai_member', 'azure_local_ai_setting_manager', 'USAGE')"
        ).fetchone() == (True,)
        db.execute("DROP EXTENSION azure_local_ai")


# -- the schema --------------------------------------------------------------------------------

# An overload that beats the extension's own for create_embeddings(%s, %s::text[], %s) with a
# small Python int (psycopg sends it as smallint), as the console calls it: whoever owns it
# would run code as the console's role.
HIJACK = """
CREATE FUNCTION azure_local_ai.create_embeddings(model_uri text, inputs text[],
                                                 batch_size smallint)
RETURNS TABLE (embedding real[]) LANGUAGE sql AS 'SELECT NULL::real[]'
"""

SCHEMA_ACL = "SELECT nspowner::regrole::text, nspacl::text[] FROM pg_namespace WHERE nspname = %s"


@pytest.fixture
def mallory(managed_pg: ManagedServer, db: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """A session of a plain role that may create schemas in the fresh database."""
    allow_extensions(db, "azure_local_ai")
    with login_roles(db, "mallory", "accomplice"):
        grant = sql.SQL("GRANT CREATE ON DATABASE {} TO mallory")
        db.execute(grant.format(sql.Identifier(FRESH_DB)))
        with connect_as(managed_pg, FRESH_DB, "mallory") as session:
            yield session


# An operator that the install script's own catalog queries would pick over pg_catalog's for
# an oid = regclass comparison, were the schema on the script's search_path.
TRAP = """
CREATE FUNCTION azure_local_ai.trap(oid, regclass) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    RAISE WARNING 'trap ran as %', current_user;
    RETURN $1 OPERATOR(pg_catalog.=) $2::oid;
END $$;
CREATE OPERATOR azure_local_ai.= (
    LEFTARG = oid, RIGHTARG = regclass, FUNCTION = azure_local_ai.trap
);
"""


def test_a_schema_made_beforehand_with_objects_in_it_is_refused(
    db: psycopg.Connection, mallory: psycopg.Connection
) -> None:
    mallory.execute("CREATE SCHEMA azure_local_ai")
    mallory.execute(HIJACK)
    mallory.execute(TRAP)
    notices: list[str] = []
    db.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    with pytest.raises(errors.ObjectNotInPrerequisiteState) as info:
        db.execute("CREATE EXTENSION azure_local_ai")
    assert notices == []  # nothing of mallory's ran, as the superuser or otherwise
    assert info.value.diag.message_primary == (
        'schema "azure_local_ai" already holds objects that are not part of extension '
        "azure_local_ai"
    )
    assert (
        "function azure_local_ai.create_embeddings(text,text[],smallint)"
        in info.value.diag.message_detail
    )
    assert not extension_exists(db)


def test_an_empty_schema_made_beforehand_is_taken_over(
    db: psycopg.Connection, mallory: psycopg.Connection
) -> None:
    mallory.execute("CREATE SCHEMA azure_local_ai")
    mallory.execute("GRANT CREATE ON SCHEMA azure_local_ai TO PUBLIC")
    mallory.execute("GRANT ALL ON SCHEMA azure_local_ai TO accomplice WITH GRANT OPTION")
    db.execute("CREATE EXTENSION azure_local_ai")
    assert db.execute(SCHEMA_ACL, ["azure_local_ai"]).fetchone() == (
        "postgres",
        ["postgres=UC/postgres", "=U/postgres"],
    )
    with pytest.raises(errors.InsufficientPrivilege):
        mallory.execute(HIJACK)
    with pytest.raises(errors.InsufficientPrivilege):
        mallory.execute("DROP SCHEMA azure_local_ai CASCADE")
    db.execute("DROP EXTENSION azure_local_ai")


def test_a_database_owner_who_creates_the_extension_cannot_add_to_its_schema(
    managed_pg: ManagedServer, db: psycopg.Connection
) -> None:
    allow_extensions(db, "azure_local_ai")
    with (
        fresh_db_owned_by(db, "alai_owner"),
        connect_as(managed_pg, FRESH_DB, "alai_owner") as user,
    ):
        user.execute("CREATE EXTENSION azure_local_ai")  # trusted: runs as superuser
        assert db.execute(SCHEMA_ACL, ["azure_local_ai"]).fetchone() == (
            "postgres",
            ["postgres=UC/postgres", "=U/postgres"],
        )
        with pytest.raises(errors.InsufficientPrivilege):
            user.execute(HIJACK)
        # a superuser's call as the console makes it reaches the extension's function
        rows = db.execute(
            "SELECT embedding FROM azure_local_ai.create_embeddings(%s, %s::text[], %s)",
            [TINY_URI, ["a cat"], 64],
        ).fetchall()
        assert len(rows) == 1 and len(rows[0][0]) == 32
        # the owner may still drop it, and create it again in the schema left behind
        user.execute("DROP EXTENSION azure_local_ai")
        user.execute("CREATE EXTENSION azure_local_ai")
        user.execute("DROP EXTENSION azure_local_ai")


# -- search_path --------------------------------------------------------------------------------


def test_no_function_depends_on_the_callers_search_path(conn: psycopg.Connection) -> None:
    # C functions resolve nothing through search_path. A function in another language, or one
    # that runs with its owner's rights, would need SET search_path = pg_catalog, pg_temp.
    rows = conn.execute(
        """
        SELECT p.oid::regprocedure::text, l.lanname, p.prosecdef, p.proconfig
          FROM pg_depend d
          JOIN pg_proc p ON p.oid = d.objid
          JOIN pg_language l ON l.oid = p.prolang
         WHERE d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
           AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'azure_local_ai')
        """
    ).fetchall()
    assert len(rows) == 16
    for name, language, security_definer, config in rows:
        if language != "c" or security_definer:
            assert "search_path=pg_catalog, pg_temp" in (config or []), name
    assert {(language, security_definer) for _, language, security_definer, _ in rows} == {
        ("c", False)
    }


# Objects an unprivileged role puts in a schema of its own, named like what SQL would use to
# check privileges, compare or measure; each one that runs writes to shadow.ran.
SHADOWS = """
CREATE SCHEMA shadow;
CREATE TABLE shadow.ran (what text);
GRANT USAGE ON SCHEMA shadow TO PUBLIC;
GRANT INSERT ON shadow.ran TO PUBLIC;
CREATE FUNCTION shadow.note(what text) RETURNS boolean LANGUAGE sql
    AS $$ INSERT INTO shadow.ran VALUES (what) RETURNING true $$;
CREATE FUNCTION shadow.array_length(anyarray, integer) RETURNS integer LANGUAGE sql
    AS $$ SELECT CASE WHEN shadow.note('array_length') THEN 1 END $$;
CREATE FUNCTION shadow.cardinality(anyarray) RETURNS integer LANGUAGE sql
    AS $$ SELECT CASE WHEN shadow.note('cardinality') THEN 1 END $$;
CREATE FUNCTION shadow.pg_has_role(name, name, text) RETURNS boolean LANGUAGE sql
    AS $$ SELECT shadow.note('pg_has_role') $$;
CREATE FUNCTION shadow.current_setting(text) RETURNS text LANGUAGE sql
    AS $$ SELECT CASE WHEN shadow.note('current_setting') THEN 'x' END $$;
CREATE FUNCTION shadow.texteq(text, text) RETURNS boolean LANGUAGE sql
    AS $$ SELECT shadow.note('=') $$;
CREATE OPERATOR shadow.= (LEFTARG = text, RIGHTARG = text, FUNCTION = shadow.texteq);
CREATE FUNCTION shadow.nameeqtext(name, text) RETURNS boolean LANGUAGE sql
    AS $$ SELECT shadow.note('name = text') $$;
CREATE OPERATOR shadow.= (LEFTARG = name, RIGHTARG = text, FUNCTION = shadow.nameeqtext);
CREATE VIEW shadow.pg_roles AS
    SELECT 'postgres'::name AS rolname, true AS rolsuper WHERE shadow.note('pg_roles');
CREATE VIEW shadow.pg_auth_members AS
    SELECT 0::oid AS roleid WHERE shadow.note('pg_auth_members');
CREATE FUNCTION shadow.create_embeddings(text, text, integer) RETURNS real[] LANGUAGE sql
    AS $$ SELECT CASE WHEN shadow.note('create_embeddings') THEN ARRAY[0]::real[] END $$;
"""

# Every function of the extension, with arguments that reach the sidecar and come back. The
# queries' own functions and operators are qualified: unqualified, the caller's own SQL would
# find the shadows (that is the caller's search_path at work, not the extension).
CALLS = [
    (
        "SELECT pg_catalog.array_length(azure_local_ai.create_embeddings(%s, 'a cat'), 1)",
        [TINY_URI],
    ),
    (
        "SELECT pg_catalog.count(*)"
        " FROM azure_local_ai.create_embeddings(%s, ARRAY['a', NULL, 'b'], 2)",
        [TINY_URI],
    ),
    (
        "SELECT pg_catalog.string_agg(id::text, ',')"
        " FROM azure_local_ai.create_embeddings(%s, ARRAY['a', 'b'], ARRAY[7, 8])",
        [TINY_URI],
    ),
    ("SELECT pg_catalog.array_length(azure_local_ai.embed_query(%s, 'a cat'), 1)", [TINY_URI]),
    ("SELECT pg_catalog.array_length(azure_local_ai.embed_passage(%s, 'a cat'), 1)", [TINY_URI]),
    ("SELECT azure_local_ai.get_setting(ARRAY['spin_control'])::text", None),
    ("SELECT azure_local_ai.get_setting('spin_control')", None),
    ("SELECT azure_local_ai.set_setting('max_wait_ms', %s)", ["2"]),
    ("SELECT azure_local_ai.set_setting(ARRAY['max_wait_ms'], ARRAY[%s])", ["2"]),
    ("SELECT azure_local_ai.model_loaded(%s)", [TINY_URI]),
    ("SELECT azure_local_ai.model_metadata(%s)::text", [TINY_URI]),
    ("SELECT azure_local_ai.version()", None),
]
FAILING_CALLS = [
    "SELECT azure_local_ai.model_register('other:v1', '/nonexistent')",
    "SELECT azure_local_ai.model_unregister('other:v1')",
    "SELECT azure_local_ai.model_unload('other:v1')",
]


def outcomes(conn: psycopg.Connection) -> list[object]:
    results: list[object] = [conn.execute(query, params).fetchone() for query, params in CALLS]
    for query in FAILING_CALLS:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(query)
        results.append(info.value.sqlstate)
    return results


@pytest.fixture
def shadows(managed_pg: ManagedServer, conn: psycopg.Connection) -> Iterator[None]:
    """The schema shadow, made by a plain role in the extension database."""
    dbname = conn.info.dbname
    with login_roles(conn, "alai_shadow"):
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO alai_shadow").format(sql.Identifier(dbname))
        )
        with connect_as(managed_pg, dbname, "alai_shadow") as attacker:
            attacker.execute(SHADOWS)
        yield


def test_shadowing_objects_first_in_search_path_change_nothing(
    conn: psycopg.Connection, shadows: None
) -> None:
    (before,) = conn.execute("SELECT azure_local_ai.get_setting('max_wait_ms')").fetchone()
    try:
        expected = outcomes(conn)
        assert expected[0] == (32,) and expected[2] == ("7,8",)
        # Ahead of pg_catalog the shadows win for unqualified names and operators: they are live.
        conn.execute("SET search_path = shadow, pg_catalog, public")
        live = conn.execute("SELECT 'a'::text = 'b'::text, array_length('{1,2}'::int[], 1)")
        assert live.fetchone() == (True, 1)
        conn.execute("TRUNCATE shadow.ran")
        assert outcomes(conn) == expected
        assert conn.execute("SELECT what FROM shadow.ran").fetchall() == []
    finally:
        conn.execute("RESET search_path")
        conn.execute("SELECT azure_local_ai.set_setting('max_wait_ms', %s)", [before])


def test_the_install_script_ignores_the_creating_sessions_temporary_objects(
    managed_pg: ManagedServer, db: psycopg.Connection
) -> None:
    allow_extensions(db, "azure_local_ai")
    with fresh_db_owned_by(db, "alai_owner"):
        with connect_as(managed_pg, FRESH_DB, "alai_owner") as user:
            # pg_temp is searched first for tables and types unless search_path names it:
            # these would be the functions' "text" and the roles the script looks at.
            user.execute("CREATE TEMP TABLE text (x int)")
            user.execute("CREATE TEMP TABLE pg_roles (rolname name, rolcanlogin bool)")
            user.execute("CREATE TEMP TABLE pg_auth_members (roleid oid)")
            user.execute("CREATE EXTENSION azure_local_ai")
        # the session ended and its temporary objects went: the functions are all there
        types = db.execute(
            """
            SELECT DISTINCT t.typnamespace::regnamespace::text
              FROM pg_proc p, unnest(p.proargtypes::oid[] || p.prorettype) AS a(type)
              JOIN pg_type t ON t.oid = a.type
             WHERE p.pronamespace = 'azure_local_ai'::regnamespace
            """
        ).fetchall()
        assert types == [("pg_catalog",)]
        assert db.execute(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'azure_local_ai'::regnamespace"
        ).fetchone() == (16,)
        assert db.execute("SELECT azure_local_ai.version()").fetchone() == ("1.1.0",)
        db.execute("DROP EXTENSION azure_local_ai")
