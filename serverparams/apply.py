"""Applying parameter changes: validate all, then ``ALTER SYSTEM`` each, reload, record.

A value set back to its default is applied with ``ALTER SYSTEM RESET`` (see ``validation``),
which returns the parameter to the server's own configuration files, not to PostgreSQL's
built-in boot value.

A save is all or nothing: when the server refuses one value (its own checks can go beyond the
console's validation), the entries already written are put back before the configuration is
reloaded, so none of the batch ever takes effect.

Saves are serialised with a session-level advisory lock on the managed server (``ALTER SYSTEM``
cannot run inside a transaction, so a transaction-scoped lock would not cover it): the rows are
re-read, checked against the values the editor showed, validated and applied while the lock is
held, so two saves cannot interleave and nobody's change is silently overwritten.

The audit rows are written in the console's database once the server has the change. When
that write fails (the database is locked, read-only or gone), the change stays applied: the
result says it could not be recorded, and the log has the details.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import psycopg
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import DatabaseError, transaction
from psycopg import sql

from serverparams.catalog import IN_AUTO_CONF, Catalog, Parameter, read_catalog
from serverparams.models import ParameterChange
from serverparams.server import ManagedServer, ServerError, get_managed_server
from serverparams.validation import Checked, Edit, check_edits

# pg_advisory_lock key of parameter saves ("prms" in ASCII).
SAVE_LOCK_KEY = 0x70726D73
_RELOAD_WAIT_S = 5.0
_AUTO_CONF_QUERY = f"SELECT name, setting FROM pg_file_settings WHERE {IN_AUTO_CONF} ORDER BY seqno"

logger = logging.getLogger(__name__)


class Restart(enum.Enum):
    ASK = "ask"  # a static change needs the user's decision first: nothing is applied
    YES = "yes"  # apply, then restart the server when the console controls it
    NO = "no"  # apply; the change waits for the next restart


@dataclass
class SaveResult:
    catalog: Catalog  # as read after the save (or before it, when nothing was applied)
    errors: dict[str, str] = field(default_factory=dict)  # validation; nothing was applied
    conflicts: list[str] = field(default_factory=list)  # changed by someone since read
    applied: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # ALTER SYSTEM refused; nothing applied
    not_applied: list[str] = field(default_factory=list)  # the rest of a refused batch
    static_changes: list[str] = field(default_factory=list)  # need a restart to take effect
    needs_decision: bool = False  # Restart.ASK and some change is static
    pending_restart: list[str] = field(default_factory=list)
    restarted: bool = False
    restart_message: str = ""
    unrecorded: list[str] = field(default_factory=list)  # history writes that failed, why
    interrupted: str = ""  # the server went away during the save: what became of it

    @property
    def ok(self) -> bool:
        return not self.errors and not self.failed and not self.needs_decision


def _identifier(name: str) -> sql.Identifier:
    # Custom parameters such as azure.extensions are written as qualified names.
    return sql.Identifier(*name.split("."))


def _alter_system(conn: psycopg.Connection, name: str, value: str) -> None:
    conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(_identifier(name), sql.Literal(value)))


def _alter_system_reset(conn: psycopg.Connection, name: str) -> None:
    """Remove ``name``'s ALTER SYSTEM entry: the configuration files decide its value again."""
    conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(_identifier(name)))


def auto_conf(conn: psycopg.Connection) -> dict[str, str]:
    """What ALTER SYSTEM has written so far (postgresql.auto.conf), by lower-case name."""
    return {name.lower(): setting for name, setting in conn.execute(_AUTO_CONF_QUERY).fetchall()}


def write_back(conn: psycopg.Connection, snapshot: dict[str, str], names: Iterable[str]) -> None:
    """Put the ALTER SYSTEM entries of ``names`` back as ``snapshot`` has them (no reload)."""
    for name in names:
        previous = snapshot.get(name.lower())
        if previous is None:
            _alter_system_reset(conn, name)
        else:
            _alter_system(conn, name, previous)


def _reload(conn: psycopg.Connection) -> None:
    """Reload the configuration and wait until this backend has read it."""
    # As a number: psycopg reads timestamps only in the ISO DateStyle, which users may change.
    query = "SELECT extract(epoch FROM pg_conf_load_time())"
    before = conn.execute(query).fetchone()
    conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + _RELOAD_WAIT_S
    while time.monotonic() < deadline:
        if conn.execute(query).fetchone() != before:
            return
        time.sleep(0.02)


def save_changes(
    edits: list[Edit],
    user: AbstractBaseUser | AnonymousUser,
    *,
    restart: Restart = Restart.ASK,
    check_base: bool = True,
    on_behalf_of: str = "",
) -> SaveResult:
    """Validate ``edits`` against the server, apply them all or report why not, record them.

    ``on_behalf_of`` names what made the change for ``user`` (e.g. a deployment), for the
    audit trail."""
    server = get_managed_server()
    progress = _Progress()
    try:
        with server.connect() as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (SAVE_LOCK_KEY,))
            try:
                result = _save_locked(
                    conn, edits, user, restart=restart, check_base=check_base,
                    on_behalf_of=on_behalf_of, progress=progress,
                )  # fmt: skip
            finally:
                if not conn.closed and not conn.broken:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (SAVE_LOCK_KEY,))
    except psycopg.OperationalError as exc:
        if progress.checked is None:
            raise  # lost before anything was written: as if the server were unreachable
        result = _recover(server, progress, user, on_behalf_of, exc)
    if restart is Restart.YES and result.pending_restart:
        restart_pending(result)
    return result


@dataclass
class _Progress:
    """How far a save got, for finishing or undoing it when its connection is lost."""

    checked: Checked | None = None  # what is being written; None: nothing written yet
    snapshot: dict[str, str] = field(default_factory=dict)  # auto.conf before the first write
    written: list[str] = field(default_factory=list)  # ALTER SYSTEM done, in order
    reloaded: bool = False  # the reload was asked for: the changes may be in effect


RECOVER_WAIT_S = 60.0  # for the server to come back after a restart during a save


def _recover(
    server: ManagedServer,
    progress: _Progress,
    user: AbstractBaseUser | AnonymousUser,
    on_behalf_of: str,
    lost: psycopg.OperationalError,
) -> SaveResult:
    """The connection died during a save (the server restarted, or went away): wait for the
    server, then undo what was written if the reload had not been asked for (a restart reads
    postgresql.auto.conf, so half a batch would otherwise take effect), or finish recording
    it if it had. Either way the result says what happened."""
    assert progress.checked is not None
    checked = progress.checked
    names = list(checked.values)
    logger.warning("the connection to the managed server was lost during a save: %s", lost)
    deadline = time.monotonic() + RECOVER_WAIT_S
    while True:
        try:
            conn = server.connect(connect_timeout=5)
            break
        except (ServerError, psycopg.OperationalError) as exc:
            if time.monotonic() > deadline:
                written = ", ".join(progress.written) or "none"
                return SaveResult(
                    catalog=Catalog(parameters=[], extensions=[]),
                    failed={names[0]: "the managed server went away during the save"},
                    not_applied=names[1:],
                    interrupted=(
                        "The connection to the managed server was lost during the save and "
                        f"the server did not come back within {RECOVER_WAIT_S:g} s ({exc}). "
                        f"Written to postgresql.auto.conf before that: {written}. Open this "
                        "blade again once the server is up and check those parameters."
                    ),
                )
            time.sleep(0.5)
    with conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (SAVE_LOCK_KEY,))
        try:
            if not progress.reloaded:
                write_back(conn, progress.snapshot, progress.written)
                _reload(conn)
                catalog = read_catalog(conn)
                return SaveResult(
                    catalog=catalog,
                    failed={names[0]: "the managed server restarted during the save"},
                    not_applied=names[1:],
                    interrupted=(
                        "The managed server restarted during the save, so the save was undone: "
                        "nothing was applied."
                    ),
                )
            result = SaveResult(catalog=read_catalog(conn), applied=list(progress.written))
            after = result.catalog.by_name()
            result.pending_restart = [
                name for name in result.applied if after[name.lower()].pending_restart
            ]
            _record(result, checked.parameters, after, user, on_behalf_of)
            return result
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (SAVE_LOCK_KEY,))


def _save_locked(
    conn: psycopg.Connection,
    edits: list[Edit],
    user: AbstractBaseUser | AnonymousUser,
    *,
    restart: Restart,
    check_base: bool,
    on_behalf_of: str,
    progress: _Progress,
) -> SaveResult:
    before = read_catalog(conn)
    checked = check_edits(edits, before, check_base=check_base)
    static = [name for name, parameter in checked.parameters.items() if parameter.is_static]
    result = SaveResult(
        catalog=before, errors=checked.errors, conflicts=checked.conflicts, static_changes=static
    )
    if checked.errors or not checked.values:
        return result
    if static and restart is Restart.ASK:
        result.needs_decision = True
        return result

    names = list(checked.values)
    written = auto_conf(conn)
    progress.checked, progress.snapshot = checked, written
    for name in names:
        try:
            if name in checked.resets:
                _alter_system_reset(conn, name)
            else:
                _alter_system(conn, name, checked.values[name])
        except psycopg.OperationalError:
            raise  # the connection is gone: save_changes recovers
        except psycopg.Error as exc:
            # Nothing is reloaded yet: putting back what this batch wrote undoes all of it.
            write_back(conn, written, result.applied)
            message = exc.diag.message_primary or str(exc)
            result.failed[name] = f"the server refused it: {message}"
            result.not_applied = [other for other in names if other != name]
            result.applied = []
            return result
        result.applied.append(name)
        progress.written.append(name)
    progress.reloaded = True
    _reload(conn)
    result.catalog = read_catalog(conn)
    after = result.catalog.by_name()
    result.pending_restart = [
        name for name in result.applied if after[name.lower()].pending_restart
    ]
    _record(result, checked.parameters, after, user, on_behalf_of)
    return result


def _record(
    result: SaveResult,
    before: dict[str, Parameter],
    after: dict[str, Parameter],
    user: AbstractBaseUser | AnonymousUser,
    on_behalf_of: str = "",
) -> None:
    """One audit row per applied change; a failed write is reported, never undoes the change."""
    username = user.get_username() or "anonymous"
    if on_behalf_of:
        username = f"{username} ({on_behalf_of})"[:150]
    changes = [
        ParameterChange(
            user=user if getattr(user, "is_authenticated", False) else None,
            username=username,
            parameter=name,
            old_value=before[name].value,
            new_value=after[name.lower()].value,
            status=(
                ParameterChange.Status.PENDING_RESTART
                if name in result.pending_restart
                else ParameterChange.Status.APPLIED
            ),
        )
        for name in result.applied
    ]
    try:
        with transaction.atomic():
            for change in changes:
                change.save()
    except DatabaseError as exc:
        logger.exception(
            "Applied to the managed server but not recorded in the change history: %s",
            "; ".join(str(change) for change in changes),
        )
        names = ", ".join(result.applied)
        were = "was" if len(result.applied) == 1 else "were"
        result.unrecorded.append(
            f"{names} {were} applied to the server, but could not be recorded in the change "
            f"history: {_reason(exc)}. Nothing was undone: the server keeps the new values, "
            "and the console's log lists what is missing from the history. Check the "
            "console's database."
        )


def _reason(exc: DatabaseError) -> str:
    """The first line of a database error, for a message beside what it stopped."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def restart_pending(result: SaveResult) -> None:
    """Restart the server so that pending changes take effect, or say how to."""
    server = get_managed_server()
    if not server.controls_process:
        result.restart_message = restart_instructions(controls_process=False)
        return
    try:
        server.restart()
    except ServerError as exc:
        result.restart_message = f"The restart failed: {exc}"
        return
    result.restarted = True
    # A restart applies every pending change, including earlier saves'.
    try:
        with transaction.atomic():  # a failure leaves an enclosing transaction usable
            ParameterChange.objects.filter(status=ParameterChange.Status.PENDING_RESTART).update(
                status=ParameterChange.Status.RESTARTED
            )
    except DatabaseError as exc:
        logger.exception("The managed server restarted; the change history could not say so")
        result.unrecorded.append(
            "The server was restarted and the pending changes are in effect, but the change "
            f"history could not be updated to say so: {_reason(exc)}. The console's log has "
            "the details. Check the console's database."
        )
    with server.connect() as conn:
        result.catalog = read_catalog(conn)
    result.pending_restart = []


def restart_instructions(*, controls_process: bool) -> str:
    """How to make pending static changes take effect."""
    if controls_process:
        return (
            "Restart the server to apply them: Save and restart here, or run "
            "`manage.py server restart`."
        )
    return (
        "The managed server is external (MANAGED_DATABASE_URL), so the console cannot restart "
        "it. Restart it where it runs (for example `systemctl restart postgresql` or "
        "`docker compose restart postgres`); until then the change is pending."
    )


def reset_all_edits(catalog: Catalog) -> list[Edit]:
    """Edits that set every modified, editable parameter back to its default.

    The default is the server's own configuration (``Parameter.default``), so what initdb or
    the configuration files set stays as it is; saving the edits runs ``ALTER SYSTEM RESET``.
    Parameters whose value comes from the connecting client (``client_encoding``) are left
    alone: every client sets its own, so a server-wide value would change nothing but the log.
    """
    return [
        Edit(name=p.name, value=p.default, base=p.value)
        for p in catalog.parameters
        if p.is_modified and not p.is_read_only and p.source != "client"
    ]
