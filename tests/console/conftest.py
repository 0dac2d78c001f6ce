"""Console tests run against a real managed server with the azure_local_ai module.

The console's tests change server parameters and restart the server, so they get a managed
server of their own (``console_pg``, built like the shared ``managed_pg`` fixture) rather than
disturbing the connections other areas' tests hold on the shared one.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from console.roles import ADMIN, READER, SETTINGS_MANAGER
from serverparams.server import ManagedServer
from tests.console.jobstack import cls_model, jobs  # noqa: F401  (fixtures)
from tests.console.servers import (
    auto_conf,
    console_pg,  # noqa: F401  (the fixture)
    restore_auto_conf,
)
from tests.console.stack import stack  # noqa: F401  (the fixture)


def pytest_configure(config: pytest.Config) -> None:
    # console/settings.py silences this for normal runs; pytest resets warning filters per test.
    config.addinivalue_line("filterwarnings", "ignore:No directory at:UserWarning")


@pytest.fixture
def server(
    console_pg: ManagedServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[ManagedServer]:
    """The managed server, as the console finds it through the environment; every parameter
    a test changes is restored afterwards."""
    monkeypatch.setenv("VAR_DIR", str(console_pg.var_dir))
    monkeypatch.setenv("MANAGED_PG_PORT", str(console_pg.port))
    monkeypatch.delenv("MANAGED_DATABASE_URL", raising=False)
    with console_pg.connect() as conn:
        snapshot = auto_conf(conn)
    yield console_pg
    with console_pg.connect() as conn:
        restore_auto_conf(conn, snapshot)


@pytest.fixture
def pg(server: ManagedServer) -> Iterator[psycopg.Connection]:
    """A superuser connection to the managed server, for checking what the console did."""
    with server.connect() as conn:
        yield conn


def _signed_in(username: str, role: str | None = None, *, superuser: bool = False) -> Client:
    """A test client signed in as a new user with ``role`` (or as a superuser)."""
    if superuser:
        user = User.objects.create_superuser(username, password="pw-for-tests-only")
    else:
        user = User.objects.create_user(username, password="pw-for-tests-only")
        if role:
            user.groups.add(Group.objects.get(name=role))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def admin_client(db: None) -> Client:
    return _signed_in("ada", ADMIN)


@pytest.fixture
def superuser_client(db: None) -> Client:
    return _signed_in("root", superuser=True)


@pytest.fixture
def reader_client(db: None) -> Client:
    return _signed_in("rita", READER)


@pytest.fixture
def manager_client(db: None) -> Client:
    return _signed_in("sam", SETTINGS_MANAGER)
