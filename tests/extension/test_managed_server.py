"""The managed server's lifecycle (serverparams/server.py) and `manage.py server`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from serverparams.server import ManagedServer, ServerError
from tests.extension.fakeservice import closed_port_url
from tests.fixtures.pg import install_module, server_var_dir
from tests.fixtures.sidecar import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def own_server() -> Iterator[ManagedServer]:
    """A server of this module's own, free to be stopped and restarted."""
    install_module()
    with server_var_dir() as var_dir:
        server = ManagedServer(var_dir=var_dir, port=free_port(), service_url=closed_port_url())
        try:
            yield server
        finally:
            server.stop()


def test_first_start_initializes_and_configures_the_module(own_server: ManagedServer) -> None:
    own_server.start()
    status = own_server.status()
    assert status.running and status.controls_process
    assert status.version is not None and status.version.startswith("16.")
    assert status.port == own_server.port
    assert status.data_dir == own_server.var_dir / "pg"
    assert status.uptime is not None
    with own_server.connect() as conn:
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN"
                " ('shared_preload_libraries', 'azure_local_ai.service_url',"
                " 'listen_addresses', 'azure.extensions')"
            ).fetchall()
        )
    assert settings == {
        "shared_preload_libraries": "azure_local_ai",
        "azure_local_ai.service_url": own_server.service_url,
        "listen_addresses": "127.0.0.1",
        "azure.extensions": "",  # a new server allows no extension until the console ticks it
    }
    assert (own_server.socket_dir / f".s.PGSQL.{own_server.port}").is_socket()


def test_start_is_idempotent(own_server: ManagedServer) -> None:
    own_server.start()
    pid = own_server.status().pid
    own_server.start()
    assert own_server.status().pid == pid


def test_static_change_is_pending_until_restart(own_server: ManagedServer) -> None:
    own_server.start()
    before = own_server.status().pid
    with own_server.connect() as conn:
        conn.execute("ALTER SYSTEM SET max_connections = 57")
        conn.execute("SELECT pg_reload_conf()")
    assert own_server.status().pending_restart is True
    own_server.restart()
    status = own_server.status()
    assert status.running and status.pid != before
    assert status.pending_restart is False
    with own_server.connect() as conn:
        assert conn.execute("SHOW max_connections").fetchone() == ("57",)


def test_stop_is_idempotent_and_status_says_how_to_start(own_server: ManagedServer) -> None:
    own_server.start()
    own_server.stop()
    own_server.stop()
    status = own_server.status()
    assert not status.running and status.pid is None
    assert "manage.py server start" in status.message
    with pytest.raises(ServerError, match=r"manage\.py server start"):
        own_server.connect()
    own_server.start()
    assert own_server.status().running


def test_external_server_is_not_controlled(own_server: ManagedServer) -> None:
    own_server.start()
    external = ManagedServer(var_dir=own_server.var_dir, database_url=own_server.uri("postgres"))
    assert external.controls_process is False
    assert external.uri("other") == own_server.uri("other")
    for action in (external.start, external.stop, external.restart):
        with pytest.raises(ServerError, match="external"):
            action()
    status = external.status()
    assert status.running and status.version == own_server.status().version
    assert status.data_dir is None and status.pid is None


def test_unreachable_external_server_reports_why(tmp_path: Path) -> None:
    port = free_port()
    external = ManagedServer(
        var_dir=tmp_path, database_url=f"postgresql://app:secret@127.0.0.1:{port}/postgres"
    )
    status = external.status()
    assert not status.running
    assert "MANAGED_DATABASE_URL" in status.message
    assert "secret" not in status.message  # the password is masked


def test_long_var_dir_gets_a_short_socket_dir(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    server = ManagedServer(var_dir=deep, port=5433)
    assert len(str(server.socket_dir / ".s.PGSQL.5433")) <= 107
    assert server.socket_dir == ManagedServer(var_dir=deep, port=5433).socket_dir
    assert server.socket_dir != ManagedServer(var_dir=tmp_path / "other", port=5433).socket_dir


def test_manage_py_server_uri_and_status(own_server: ManagedServer) -> None:
    own_server.start()
    env = {
        **os.environ,
        "VAR_DIR": str(own_server.var_dir),
        "MANAGED_PG_PORT": str(own_server.port),
        "MANAGED_DATABASE_URL": "",
    }

    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", "server", *args],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )

    assert manage("uri").stdout == own_server.uri() + "\n"
    status = manage("status").stdout
    assert "running" in status
    assert str(own_server.port) in status
    manage("start")  # already running: nothing to do, no error
    assert "running" in manage("status").stdout


def test_manage_py_server_start_reports_an_unusable_var_dir() -> None:
    var_dir = "/proc/azure_local_ai"  # cannot be created, even by root
    result = subprocess.run(
        [sys.executable, "manage.py", "server", "start"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "VAR_DIR": var_dir, "MANAGED_DATABASE_URL": ""},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "Cannot start the managed server" in result.stderr
    assert var_dir in result.stderr  # what could not be created
