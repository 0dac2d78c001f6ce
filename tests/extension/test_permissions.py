"""Who may change settings and models: superusers and members of azure_pg_admin or
azure_local_ai_setting_manager; everyone with USAGE may embed and read settings."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors

from serverparams.server import ManagedServer
from tests.extension.conftest import TINY_URI

USER = "ext_tests_user"

PRIVILEGED = [
    "SELECT azure_local_ai.set_setting('max_wait_ms', '2')",
    "SELECT azure_local_ai.set_setting(ARRAY['max_wait_ms'], ARRAY['2'])",
    "SELECT azure_local_ai.model_register('other:v1', '/nonexistent')",
    "SELECT azure_local_ai.model_unregister('other:v1')",
    "SELECT azure_local_ai.model_unload('other:v1')",
]


@pytest.fixture
def user_conn(
    managed_pg: ManagedServer, ext_db: str, conn: psycopg.Connection
) -> Iterator[psycopg.Connection]:
    """A session of a plain login role (no superuser, no administration role)."""
    conn.execute(f"DROP ROLE IF EXISTS {USER}")
    conn.execute(f"CREATE ROLE {USER} LOGIN")
    uri = managed_pg.uri(ext_db).replace("postgres@", f"{USER}@", 1)
    try:
        with psycopg.connect(uri, autocommit=True) as user:
            yield user
    finally:
        conn.execute(f"DROP ROLE {USER}")


def test_extension_creates_the_administration_roles(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        "SELECT rolname, rolcanlogin FROM pg_roles"
        " WHERE rolname IN ('azure_pg_admin', 'azure_local_ai_setting_manager') ORDER BY 1"
    ).fetchall()
    assert rows == [("azure_local_ai_setting_manager", False), ("azure_pg_admin", False)]


def test_plain_user_may_embed_and_read_settings(user_conn: psycopg.Connection) -> None:
    (vector,) = user_conn.execute(
        "SELECT azure_local_ai.create_embeddings(%s, 'a cat')", [TINY_URI]
    ).fetchone()
    assert len(vector) == 32
    (settings,) = user_conn.execute("SELECT azure_local_ai.get_setting()").fetchone()
    assert "intra_op_parallelism" in settings


@pytest.mark.parametrize("statement", PRIVILEGED)
def test_plain_user_may_not_change_settings_or_models(
    user_conn: psycopg.Connection, statement: str
) -> None:
    with pytest.raises(errors.InsufficientPrivilege) as info:
        user_conn.execute(statement)
    assert "permission denied for azure_local_ai." in info.value.diag.message_primary
    assert "azure_local_ai_setting_manager" in info.value.diag.message_hint


@pytest.mark.parametrize("role", ["azure_local_ai_setting_manager", "azure_pg_admin"])
def test_members_of_either_role_may_change_settings(
    conn: psycopg.Connection, user_conn: psycopg.Connection, role: str
) -> None:
    conn.execute(f"GRANT {role} TO {USER}")
    try:
        (before,) = user_conn.execute("SELECT azure_local_ai.get_setting('max_wait_ms')").fetchone()
        user_conn.execute("SELECT azure_local_ai.set_setting('max_wait_ms', %s)", [before])
        # past the permission check, the sidecar itself answers (unknown model)
        with pytest.raises(errors.UndefinedObject):
            user_conn.execute("SELECT azure_local_ai.model_unload('other:v1')")
    finally:
        conn.execute(f"REVOKE {role} FROM {USER}")
