"""The databases of the managed server, as pages list them."""

from __future__ import annotations

from console.overview import RENDER_TIMEOUT_S
from serverparams.server import get_managed_server


def managed_databases() -> list[str]:
    """The managed server's databases that accept connections, templates aside, by name;
    raises ServerError or psycopg.Error when it cannot be asked."""
    with get_managed_server().connect(connect_timeout=RENDER_TIMEOUT_S) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate"
            " ORDER BY datname"
        ).fetchall()
    return [row[0] for row in rows]
