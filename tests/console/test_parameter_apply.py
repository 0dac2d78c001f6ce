"""Saving parameters on the real managed server: apply, reload, pending restart, audit, locks."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from django.contrib.auth.models import User

from serverparams.apply import SAVE_LOCK_KEY, Restart, auto_conf, reset_all_edits, save_changes
from serverparams.catalog import read_catalog
from serverparams.models import ParameterChange
from serverparams.server import ManagedServer
from serverparams.validation import Edit
from tests.console.servers import running_server, show

pytestmark = pytest.mark.django_db


@pytest.fixture
def ada(db: None) -> User:
    return User.objects.create_superuser("ada", password="pw-for-tests-only")


def test_dynamic_change_is_applied_reloaded_and_recorded(server: ManagedServer, ada: User) -> None:
    result = save_changes([Edit("work_mem", "8MB", base="4096")], ada)
    assert result.ok and result.applied == ["work_mem"]
    assert result.pending_restart == []
    assert show(server, "work_mem") == "8MB"
    assert result.catalog.by_name()["work_mem"].value == "8192"
    change = ParameterChange.objects.get()
    assert (change.parameter, change.old_value, change.new_value) == ("work_mem", "4096", "8192")
    assert change.user == ada and change.username == "ada"
    assert change.status == ParameterChange.Status.APPLIED


def test_static_change_asks_before_applying(server: ManagedServer, ada: User) -> None:
    before = show(server, "max_connections")
    result = save_changes([Edit("max_connections", str(int(before) + 10))], ada)
    assert result.needs_decision and result.static_changes == ["max_connections"]
    assert result.applied == []
    with server.connect() as conn:
        assert not read_catalog(conn).by_name()["max_connections"].pending_restart
    assert not ParameterChange.objects.exists()


def test_static_change_saved_only_is_pending_restart(server: ManagedServer, ada: User) -> None:
    before = show(server, "max_connections")
    wanted = str(int(before) + 10)
    result = save_changes([Edit("max_connections", wanted, base=before)], ada, restart=Restart.NO)
    assert result.applied == ["max_connections"]
    assert result.pending_restart == ["max_connections"]
    parameter = result.catalog.by_name()["max_connections"]
    assert parameter.pending_restart and parameter.value == wanted
    assert show(server, "max_connections") == before  # still running with the old value
    change = ParameterChange.objects.get()
    assert change.status == ParameterChange.Status.PENDING_RESTART
    assert (change.old_value, change.new_value) == (before, wanted)


@pytest.fixture
def restartable_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ManagedServer]:
    """A server of this test's own: restarting it disturbs no other test."""
    with running_server() as own:
        monkeypatch.setenv("VAR_DIR", str(own.var_dir))
        monkeypatch.setenv("MANAGED_PG_PORT", str(own.port))
        monkeypatch.delenv("MANAGED_DATABASE_URL", raising=False)
        yield own


def test_save_and_restart_makes_a_static_change_take_effect(
    restartable_server: ManagedServer, ada: User
) -> None:
    before = show(restartable_server, "max_connections")
    wanted = str(int(before) + 5)
    result = save_changes([Edit("max_connections", wanted)], ada, restart=Restart.YES)
    assert result.restarted, result.restart_message
    assert show(restartable_server, "max_connections") == wanted
    assert not result.catalog.by_name()["max_connections"].pending_restart
    assert ParameterChange.objects.get().status == ParameterChange.Status.RESTARTED


def test_invalid_edit_applies_nothing(server: ManagedServer, ada: User) -> None:
    result = save_changes(
        [Edit("enable_seqscan", "off"), Edit("work_mem", "1"), Edit("port", "1")], ada
    )
    assert set(result.errors) == {"work_mem", "port"}
    assert result.applied == []
    assert show(server, "enable_seqscan") == "on"
    assert not ParameterChange.objects.exists()


def test_injection_in_names_and_values_never_reaches_sql(
    server: ManagedServer, pg: psycopg.Connection, ada: User
) -> None:
    pg.execute("CREATE TABLE IF NOT EXISTS injection_target (id int)")
    try:
        attack = "'; DROP TABLE injection_target; --"
        refused = save_changes(
            [Edit(f"work_mem{attack}", "1"), Edit("work_mem", f"4MB{attack}")], ada
        )
        assert refused.applied == [] and len(refused.errors) == 2
        # A string parameter takes the text as it is: stored as a literal, not run.
        stored = save_changes([Edit("log_line_prefix", attack)], ada)
        assert stored.applied == ["log_line_prefix"]
        assert show(server, "log_line_prefix") == attack.strip()
        assert pg.execute("SELECT to_regclass('injection_target')").fetchone() == (
            "injection_target",
        )
    finally:
        pg.execute("DROP TABLE IF EXISTS injection_target")


def test_a_refused_apply_applies_nothing_and_says_why(
    server: ManagedServer, pg: psycopg.Connection, ada: User
) -> None:
    written = auto_conf(pg)
    # Valid by type, but the server's own check refuses an unknown text search configuration.
    result = save_changes(
        [
            Edit("work_mem", "16MB"),
            Edit("default_text_search_config", "pg_catalog.no_such_config"),
            Edit("statement_timeout", "30s"),
        ],
        ada,
    )
    assert result.applied == [] and not result.ok
    assert "the server refused it" in result.failed["default_text_search_config"]
    assert result.not_applied == ["work_mem", "statement_timeout"]
    assert show(server, "work_mem") == "4MB"
    assert show(server, "statement_timeout") == "0"
    assert auto_conf(pg) == written  # work_mem's entry was put back, not just left unloaded
    assert not ParameterChange.objects.exists()


def test_a_concurrent_change_is_not_overwritten(
    server: ManagedServer, pg: psycopg.Connection, ada: User
) -> None:
    with server.connect() as conn:
        base = read_catalog(conn).by_name()["work_mem"].value
    # Someone else saves first.
    pg.execute("ALTER SYSTEM SET work_mem = '32MB'")
    pg.execute("SELECT pg_reload_conf()")
    result = save_changes([Edit("work_mem", "8MB", base=base)], ada)
    assert result.applied == []
    assert "changed by someone else" in result.errors["work_mem"]
    assert "'32768'" in result.errors["work_mem"]
    assert show(server, "work_mem") == "32MB"


# Transactional: the save runs in another thread and writes its audit row there.
@pytest.mark.django_db(transaction=True)
def test_saves_wait_for_each_other(
    server: ManagedServer, pg: psycopg.Connection, ada: User
) -> None:
    pg.execute("SELECT pg_advisory_lock(%s)", (SAVE_LOCK_KEY,))
    outcome: list[object] = []
    worker = threading.Thread(
        target=lambda: outcome.append(save_changes([Edit("work_mem", "12MB")], ada))
    )
    try:
        worker.start()
        # Wait (bounded) until the save is seen queueing for the lock.
        deadline = time.monotonic() + 30
        while not pg.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
            " AND NOT granted AND objid = %s)",
            (SAVE_LOCK_KEY,),
        ).fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, "the save never asked for the lock"
            time.sleep(0.05)
        assert outcome == []
        assert show(server, "work_mem") != "12MB"
    finally:
        pg.execute("SELECT pg_advisory_unlock(%s)", (SAVE_LOCK_KEY,))
        worker.join(timeout=60)
    assert len(outcome) == 1 and outcome[0].applied == ["work_mem"]  # type: ignore[attr-defined]
    assert show(server, "work_mem") == "12MB"


def test_reset_all_sets_modified_parameters_back_to_default(
    server: ManagedServer, ada: User
) -> None:
    save_changes([Edit("work_mem", "8MB"), Edit("enable_seqscan", "off")], ada)
    with server.connect() as conn:
        edits = reset_all_edits(read_catalog(conn))
    by_name = {edit.name: edit for edit in edits}
    assert by_name["work_mem"].value == "4096" and by_name["work_mem"].base == "8192"
    assert by_name["enable_seqscan"].value == "on"
    assert "port" not in by_name and "shared_preload_libraries" not in by_name
    result = save_changes([by_name["work_mem"], by_name["enable_seqscan"]], ada, restart=Restart.NO)
    assert result.ok
    assert show(server, "work_mem") == "4MB" and show(server, "enable_seqscan") == "on"
