"""The sidecar down, stalled, killed or answering garbage: a clear ERROR with a fitting SQLSTATE,
never a crash or a hang, and the session stays usable afterwards."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from serverparams.server import ManagedServer
from tests.extension.conftest import TINY_URI, service_url
from tests.extension.fakeservice import closed_port_url, fake_service
from tests.fixtures.sidecar import start_sidecar

# Generous: the module reacts within ~50 ms; this only catches a hang.
INTERRUPT_BOUND_S = 10.0


def assert_session_usable(conn: psycopg.Connection, pid: int) -> None:
    """Same backend (it did not crash), and it still answers, embeddings included."""
    assert conn.execute("SELECT pg_backend_pid()").fetchone() == (pid,)
    row = conn.execute(
        "SELECT array_length(azure_local_ai.create_embeddings(%s, 'a cat'), 1)", [TINY_URI]
    ).fetchone()
    assert row == (32,)


def run_in_thread(target: Callable[[], object]) -> tuple[threading.Thread, dict[str, object]]:
    outcome: dict[str, object] = {}

    def runner() -> None:
        started = time.monotonic()
        try:
            outcome["result"] = target()
        except BaseException as exc:  # the assertion is on the exception itself
            outcome["error"] = exc
        outcome["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=runner, daemon=True)
    thread.start()
    return thread, outcome


def wait_until_active(managed_pg: ManagedServer, dbname: str, pid: int) -> None:
    """Wait until backend pid is running a statement."""
    with managed_pg.connect(dbname) as watcher:
        deadline = time.monotonic() + INTERRUPT_BOUND_S
        while time.monotonic() < deadline:
            state = watcher.execute(
                "SELECT state FROM pg_stat_activity WHERE pid = %s", [pid]
            ).fetchone()
            if state == ("active",):
                return
            time.sleep(0.02)
    pytest.fail(f"backend {pid} never started its statement")


def test_service_down_is_a_connection_error_naming_the_url(conn: psycopg.Connection) -> None:
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    url = closed_port_url()
    with service_url(conn, url):
        with pytest.raises(errors.SqlclientUnableToEstablishSqlconnection) as info:
            conn.execute("SELECT azure_local_ai.create_embeddings(%s, 'hello')", [TINY_URI])
        assert url in info.value.diag.message_primary
        assert "azure_local_ai.service_url" in info.value.diag.message_hint
        with pytest.raises(errors.SqlclientUnableToEstablishSqlconnection):
            conn.execute("SELECT azure_local_ai.get_setting()")
    assert_session_usable(conn, pid)


def test_malformed_service_url_is_a_connection_error(conn: psycopg.Connection) -> None:
    with service_url(conn, "http://no such host:8090"):
        with pytest.raises(errors.SqlclientUnableToEstablishSqlconnection) as info:
            conn.execute("SELECT azure_local_ai.get_setting()")
        assert "http://no such host:8090" in info.value.diag.message_primary
        assert "azure_local_ai.service_url" in info.value.diag.message_hint


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [("not_http", "not valid HTTP"), ("short_binary", "malformed embedding response")],
)
def test_answer_that_is_not_http_or_a_malformed_embedding_body_is_a_protocol_violation(
    conn: psycopg.Connection, behaviour: str, message: str
) -> None:
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    with fake_service(behaviour) as fake, service_url(conn, fake.url):
        with pytest.raises(errors.ProtocolViolation) as info:
            conn.execute("SELECT azure_local_ai.create_embeddings(%s, 'hello')", [TINY_URI])
        assert fake.url in info.value.diag.message_primary
        assert message in info.value.diag.message_primary
        with pytest.raises(errors.ProtocolViolation):
            conn.execute(
                "SELECT * FROM azure_local_ai.create_embeddings(%s, ARRAY['a', 'b'])", [TINY_URI]
            )
    assert_session_usable(conn, pid)


def test_error_status_without_json_is_a_protocol_violation(conn: psycopg.Connection) -> None:
    with fake_service("error_no_json") as fake, service_url(conn, fake.url):
        with pytest.raises(errors.ProtocolViolation) as info:
            conn.execute("SELECT azure_local_ai.model_metadata(%s)", [TINY_URI])
        assert "HTTP 500" in info.value.diag.message_primary


def test_timeout_ms_bounds_a_stalled_call(conn: psycopg.Connection) -> None:
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    with fake_service("stall") as fake, service_url(conn, fake.url):
        with pytest.raises(errors.QueryCanceled) as info:
            conn.execute(
                "SELECT azure_local_ai.create_embeddings(%s, 'hello', timeout_ms => 300)",
                [TINY_URI],
            )
        message = info.value.diag.message_primary
        assert fake.url in message
        assert "timeout_ms = 300" in message
    assert_session_usable(conn, pid)


def test_statement_timeout_interrupts_a_stalled_call(conn: psycopg.Connection) -> None:
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    with fake_service("stall") as fake, service_url(conn, fake.url):
        conn.execute("SET statement_timeout = 200")
        try:
            thread, outcome = run_in_thread(
                lambda: conn.execute(
                    "SELECT azure_local_ai.create_embeddings(%s, 'hello')", [TINY_URI]
                )
            )
            thread.join(INTERRUPT_BOUND_S)
            assert not thread.is_alive(), "statement_timeout did not stop the call"
            assert isinstance(outcome["error"], errors.QueryCanceled)
            assert "statement timeout" in str(outcome["error"])
        finally:
            conn.execute("RESET statement_timeout")
    assert_session_usable(conn, pid)


def test_cancel_interrupts_a_stalled_call(
    conn: psycopg.Connection, managed_pg: ManagedServer, ext_db: str
) -> None:
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    with fake_service("stall") as fake, service_url(conn, fake.url):
        thread, outcome = run_in_thread(
            lambda: conn.execute(
                "SELECT * FROM azure_local_ai.create_embeddings(%s, ARRAY['a', 'b'])", [TINY_URI]
            )
        )
        wait_until_active(managed_pg, ext_db, pid)
        # the request reached the service: the call is in flight, not queued
        deadline = time.monotonic() + INTERRUPT_BOUND_S
        while fake.connections == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fake.connections >= 1
        with managed_pg.connect(ext_db) as other:
            assert other.execute("SELECT pg_cancel_backend(%s)", [pid]).fetchone() == (True,)
        thread.join(INTERRUPT_BOUND_S)
        assert not thread.is_alive(), "pg_cancel_backend did not stop the call"
        assert isinstance(outcome["error"], errors.QueryCanceled)
    assert_session_usable(conn, pid)


def test_sidecar_killed_mid_call_gives_a_connection_error(
    conn: psycopg.Connection,
    managed_pg: ManagedServer,
    ext_db: str,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    doomed = start_sidecar(tmp_path / "doomed-sidecar")
    try:
        doomed.client.register(TINY_URI, str(tiny_model_dir))
        with service_url(conn, doomed.url):
            # thousands of one-text requests: still running when the sidecar dies
            thread, outcome = run_in_thread(
                lambda: conn.execute(
                    "SELECT count(*) FROM azure_local_ai.create_embeddings(%s,"
                    " array_fill('a cat'::text, ARRAY[100000]), batch_size => 1)",
                    [TINY_URI],
                )
            )
            wait_until_active(managed_pg, ext_db, pid)
            time.sleep(0.2)
            doomed.kill()
            thread.join(INTERRUPT_BOUND_S * 3)
            assert not thread.is_alive(), "the call hung after the sidecar died"
            error = outcome.get("error")
            assert isinstance(error, psycopg.OperationalError), outcome
            assert error.sqlstate is not None and error.sqlstate.startswith("08"), error.sqlstate
            assert doomed.url in error.diag.message_primary
    finally:
        doomed.kill()
    assert_session_usable(conn, pid)
