"""Saving parameters on the real managed server: apply, reload, pending restart, reset to the
server's configured defaults, audit, locks."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from django.contrib.auth.models import User

from serverparams.apply import (
    SAVE_LOCK_KEY,
    Restart,
    auto_conf,
    reset_all_edits,
    restart_pending,
    save_changes,
)
from serverparams.catalog import read_catalog
from serverparams.models import ParameterChange
from serverparams.server import ManagedServer
from serverparams.validation import Edit
from tests.console.servers import read_only_console_db, running_server, show

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


# What initdb writes into postgresql.conf (locale, time zone, date style, text search), which
# PostgreSQL's built-in boot values would all undo.
INITDB_PARAMETERS = [
    "lc_messages",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "TimeZone",
    "log_timezone",
    "DateStyle",
    "default_text_search_config",
    "dynamic_shared_memory_type",
    "max_connections",
    "shared_buffers",
]


def test_reset_all_undoes_the_users_changes_and_keeps_what_initdb_wrote(
    server: ManagedServer, pg: psycopg.Connection, ada: User
) -> None:
    in_postgresql_conf = {
        name.lower()
        for (name,) in pg.execute(
            "SELECT name FROM pg_file_settings WHERE sourcefile LIKE '%/postgresql.conf'"
        ).fetchall()
    }
    assert {name.lower() for name in INITDB_PARAMETERS} <= in_postgresql_conf
    initdb_wrote = {name: show(server, name) for name in INITDB_PARAMETERS}
    assert initdb_wrote["lc_messages"] == "C.UTF-8" and initdb_wrote["DateStyle"] == "ISO, MDY"
    # The user's own changes, three of them to parameters postgresql.conf sets too.
    mine = {
        "work_mem": "8MB",
        "enable_seqscan": "off",
        "TimeZone": "Asia/Tokyo",
        "DateStyle": "German, DMY",
        "lc_monetary": "C",
        "max_connections": str(int(initdb_wrote["max_connections"]) + 10),
    }
    changed = save_changes([Edit(n, v) for n, v in mine.items()], ada, restart=Restart.NO)
    assert changed.ok and show(server, "TimeZone") == "Asia/Tokyo"

    with server.connect() as conn:
        edits = {edit.name: edit for edit in reset_all_edits(read_catalog(conn))}
    assert set(edits) == set(mine)
    assert edits["TimeZone"].value == initdb_wrote["TimeZone"]
    assert edits["lc_monetary"].value == initdb_wrote["lc_monetary"] == "C.UTF-8"
    assert edits["work_mem"].value == "4096"  # no file sets it: the boot value
    result = save_changes(list(edits.values()), ada, restart=Restart.NO)

    assert result.ok and set(result.applied) == set(mine)
    assert {name: show(server, name) for name in INITDB_PARAMETERS} == initdb_wrote
    assert show(server, "work_mem") == "4MB" and show(server, "enable_seqscan") == "on"
    assert not {name.lower() for name in mine} & set(auto_conf(pg))  # reset, not copied
    by_name = result.catalog.by_name()
    assert not by_name["max_connections"].pending_restart
    assert [p.name for p in result.catalog.parameters if p.is_modified] == []


def test_a_value_equal_to_the_default_is_reset_however_it_is_written(
    server: ManagedServer, pg: psycopg.Connection, ada: User
) -> None:
    configured = show(server, "TimeZone")
    save_changes([Edit("TimeZone", "Asia/Tokyo"), Edit("work_mem", "8MB")], ada)
    assert {"timezone", "work_mem"} <= set(auto_conf(pg))
    # What the row's "Reset to default" sends, and the default typed in another unit.
    result = save_changes([Edit("TimeZone", configured), Edit("work_mem", "4MB")], ada)
    assert result.ok and result.applied == ["TimeZone", "work_mem"]
    assert not {"timezone", "work_mem"} & set(auto_conf(pg))
    assert show(server, "TimeZone") == configured and show(server, "work_mem") == "4MB"
    recorded = ParameterChange.objects.filter(old_value="8192").get()
    assert (recorded.parameter, recorded.new_value) == ("work_mem", "4096")


def test_resetting_a_static_parameter_no_file_sets_returns_it_to_the_boot_value(
    restartable_server: ManagedServer, ada: User
) -> None:
    raised = save_changes([Edit("max_worker_processes", "9")], ada, restart=Restart.YES)
    assert raised.restarted and show(restartable_server, "max_worker_processes") == "9"
    with restartable_server.connect() as conn:
        edits = reset_all_edits(read_catalog(conn))
    assert edits == [Edit("max_worker_processes", "8", base="9")]
    result = save_changes(edits, ada, restart=Restart.NO)
    parameter = result.catalog.by_name()["max_worker_processes"]
    assert parameter.pending_restart and parameter.value == "8" and not parameter.is_modified
    assert ParameterChange.objects.latest("id").status == ParameterChange.Status.PENDING_RESTART
    restart_pending(result)
    assert result.restarted and show(restartable_server, "max_worker_processes") == "8"


def test_a_change_the_history_cannot_record_stays_applied_and_says_so(
    server: ManagedServer, ada: User, caplog: pytest.LogCaptureFixture
) -> None:
    with read_only_console_db():
        result = save_changes([Edit("work_mem", "8MB", base="4096")], ada)
    assert result.ok and result.applied == ["work_mem"]
    assert show(server, "work_mem") == "8MB"  # applied, and not rolled back
    (message,) = result.unrecorded
    assert message.startswith(
        "work_mem was applied to the server, but could not be recorded in the change history: "
        "attempt to write a readonly database."
    )
    assert not ParameterChange.objects.exists()
    (logged,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "work_mem: '4096' -> '8192' by ada" in logged.getMessage() and logged.exc_info


def test_a_restart_the_history_cannot_record_still_takes_effect_and_says_so(
    restartable_server: ManagedServer, ada: User
) -> None:
    wanted = str(int(show(restartable_server, "max_connections")) + 5)
    result = save_changes([Edit("max_connections", wanted)], ada, restart=Restart.NO)
    assert result.pending_restart == ["max_connections"]
    with read_only_console_db():
        restart_pending(result)
    assert result.restarted and show(restartable_server, "max_connections") == wanted
    (message,) = result.unrecorded
    assert "restarted and the pending changes are in effect, but the change history" in message
    assert ParameterChange.objects.get().status == ParameterChange.Status.PENDING_RESTART


def restart_at(
    monkeypatch: pytest.MonkeyPatch, server: ManagedServer, function: str, call: int
) -> None:
    """Restart the managed server just before the ``call``-th call of ``apply.<function>``,
    as if it went down in the middle of a save."""
    from serverparams import apply

    original = getattr(apply, function)
    calls = []

    def restarting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == call:
            server.restart()
        return original(*args, **kwargs)

    monkeypatch.setattr(apply, function, restarting)


def test_a_server_restart_in_the_middle_of_a_save_undoes_what_was_written(
    server: ManagedServer, ada: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    edits = [Edit("work_mem", "8MB"), Edit("enable_seqscan", "off"), Edit("random_page_cost", "2")]
    restart_at(monkeypatch, server, "_alter_system", 2)  # after work_mem was written
    result = save_changes(edits, ada)
    assert not result.ok and result.applied == []
    assert list(result.failed) == ["work_mem"]
    assert result.interrupted == (
        "The managed server restarted during the save, so the save was undone: nothing was applied."
    )
    assert result.not_applied == ["enable_seqscan", "random_page_cost"]
    # Undone: the restart had read work_mem from postgresql.auto.conf, and it is gone again.
    assert show(server, "work_mem") == "4MB" and show(server, "enable_seqscan") == "on"
    with server.connect() as conn:
        assert "work_mem" not in auto_conf(conn)
    assert not ParameterChange.objects.exists()


def test_a_server_restart_after_the_reload_still_records_the_save(
    server: ManagedServer, ada: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    restart_at(monkeypatch, server, "read_catalog", 2)  # the read after the reload
    result = save_changes([Edit("work_mem", "8MB"), Edit("enable_seqscan", "off")], ada)
    assert result.ok and result.applied == ["work_mem", "enable_seqscan"]
    assert show(server, "work_mem") == "8MB" and show(server, "enable_seqscan") == "off"
    assert sorted(ParameterChange.objects.values_list("parameter", flat=True)) == [
        "enable_seqscan",
        "work_mem",
    ]
