"""The managed PostgreSQL server: where it is, how to connect, and (when embedded) its lifecycle.

Two kinds of managed server:

* **Embedded** (the default): the PostgreSQL 16 + pgvector binaries of the ``pgserver`` package,
  data in ``VAR_DIR/pg``, listening on ``127.0.0.1:MANAGED_PG_PORT`` and on a Unix socket in
  ``VAR_DIR/run``. The project's ``azure_local_ai`` module must be installed into that
  PostgreSQL (``make extension``); start() configures ``shared_preload_libraries`` and
  ``azure_local_ai.service_url`` before the server comes up. Authentication is ``trust`` for
  local and loopback connections only (the server never listens beyond 127.0.0.1): anyone with
  a shell on this machine can connect as the superuser ``postgres``. Use an external server
  (below) with password authentication where that is not acceptable.
* **External**: ``MANAGED_DATABASE_URL`` names a server run elsewhere. Its parameters are read
  and written over SQL, but its process is not ours: start/stop/restart refuse with a message
  saying what to do instead.

When running as root, PostgreSQL refuses to run; like ``pgserver`` itself, the server then runs
as the system user ``pgserver``, which owns the data directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pwd
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psutil
import psycopg

from inference.config import (
    env_int,
    env_str,
    inference_token,
    log_dir,
    module_service_url,
    var_dir,
)

MODULE_NAME = "azure_local_ai"
SYSTEM_USER = "pgserver"  # pgserver's convention for running PostgreSQL when we are root
SUPERUSER = "postgres"
MANAGED_CONF = "managed.conf"  # written by start(); included from postgresql.conf
_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL
_START_TIMEOUT_S = 60


class ServerError(RuntimeError):
    """A lifecycle or connection problem, with a message that says what to do."""


@dataclass(frozen=True)
class ServerStatus:
    running: bool
    pid: int | None
    version: str | None  # server_version, e.g. "16.2"
    port: int | None
    data_dir: Path | None  # None for an external server
    uptime: timedelta | None
    pending_restart: bool  # some parameter change waits for a restart
    controls_process: bool
    message: str = ""  # why the server is not reachable, when it is not


def pg_bin_dir() -> Path:
    """The bin directory of the embedded PostgreSQL (pgserver's installation)."""
    # Importing pgserver warns about XDG_RUNTIME_DIR, a directory we do not use.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def pg_config_path() -> Path:
    return pg_bin_dir() / "pg_config"


def module_library_path() -> Path:
    """Where ``make extension`` installs the module's shared library."""
    pkglibdir = subprocess.run(
        [str(pg_config_path()), "--pkglibdir"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return Path(pkglibdir) / f"{MODULE_NAME}.so"


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def display_uri(uri: str) -> str:
    """``uri`` with its password, if any, masked: safe to show in a page or a message.

    libpq takes the password in either place: ``user:password@host`` or ``?password=``.
    """
    parts = urlsplit(uri)
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
        parts = parts._replace(netloc=netloc)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "password" for key, _value in query):
        masked = [(key, "***" if key == "password" else value) for key, value in query]
        parts = parts._replace(query=urlencode(masked, safe="*"))
    return urlunsplit(parts)


class ManagedServer:
    """One managed PostgreSQL server; see the module docstring for the two kinds."""

    def __init__(
        self,
        *,
        var_dir: Path,
        port: int = 5433,
        database_url: str = "",
        service_url: str = "http://127.0.0.1:8090",
        service_token: str = "",
    ) -> None:
        self.var_dir = Path(var_dir)
        self.port = port
        self.database_url = database_url
        self.service_url = service_url
        self.service_token = service_token
        self.data_dir = self.var_dir / "pg"
        self.log_file = log_dir(self.var_dir) / "postgres.log"

    # -- where -------------------------------------------------------------------------------

    @property
    def controls_process(self) -> bool:
        """False when the server is external (``MANAGED_DATABASE_URL``): no start/stop here."""
        return not self.database_url

    @property
    def socket_dir(self) -> Path:
        """``VAR_DIR/run``, or a short directory under /tmp when that path is too long."""
        preferred = self.var_dir / "run"
        if len(str(preferred / f".s.PGSQL.{self.port}")) <= _SOCKET_PATH_MAX:
            return preferred
        digest = hashlib.sha256(str(self.var_dir.resolve()).encode()).hexdigest()[:12]
        return Path("/tmp") / f"pglocalai-{digest}"

    def uri(self, dbname: str = "postgres") -> str:
        """A libpq URI a superuser can connect with, to database ``dbname``."""
        if self.database_url:
            parts = urlsplit(self.database_url)
            return urlunsplit(parts._replace(path="/" + dbname))
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the embedded server (initdb on first start). Nothing happens if it runs."""
        self._require_control("start")
        with self._lock():
            if self._postmaster_pid() is not None:
                return
            self._check_module_installed()
            self._prepare_directories()
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb()
            self._write_managed_conf()
            self._pg_ctl_start()

    def stop(self) -> None:
        """Stop the embedded server (fast shutdown). Nothing happens if it is not running."""
        self._require_control("stop")
        with self._lock():
            pid = self._postmaster_pid()
            if pid is None:
                return
            # SIGINT is PostgreSQL's fast shutdown, what `pg_ctl -m fast stop` sends; signalling
            # directly needs no access to the data directory's path, which a tmp-dir cleaner
            # may have narrowed since the start.
            try:
                os.kill(pid, signal.SIGINT)
                psutil.Process(pid).wait(_START_TIMEOUT_S)
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass  # it exited on its own meanwhile
            except psutil.TimeoutExpired as exc:
                raise ServerError(
                    f"The managed server (pid {pid}) did not stop within {_START_TIMEOUT_S} s.\n"
                    f"{self._log_tail()}"
                ) from exc

    def restart(self) -> None:
        """Stop (if running) and start again, so that static parameters take effect."""
        self.stop()
        self.start()

    def status(self, *, connect_timeout: int = 5) -> ServerStatus:
        pid = self._postmaster_pid() if self.controls_process else None
        data_dir = self.data_dir if self.controls_process else None
        if self.controls_process and pid is None:
            return ServerStatus(
                running=False,
                pid=None,
                version=None,
                port=self.port,
                data_dir=data_dir,
                uptime=None,
                pending_restart=False,
                controls_process=True,
                message="The managed server is stopped. Start it with: manage.py server start",
            )
        try:
            with self.connect(connect_timeout=connect_timeout) as conn:
                row = conn.execute(
                    "SELECT current_setting('server_version'),"
                    " current_setting('port')::int,"
                    # A number: psycopg reads timestamps only in the ISO DateStyle.
                    " extract(epoch FROM pg_postmaster_start_time())::float8,"
                    " EXISTS (SELECT 1 FROM pg_settings WHERE pending_restart)"
                ).fetchone()
        except (ServerError, psycopg.Error) as exc:
            return ServerStatus(
                running=pid is not None,
                pid=pid,
                version=None,
                port=self.port if self.controls_process else None,
                data_dir=data_dir,
                uptime=None,
                pending_restart=False,
                controls_process=self.controls_process,
                message=str(exc)
                if isinstance(exc, ServerError)
                else f"The managed server answered with an error: {str(exc).strip()}",
            )
        assert row is not None
        version, port, started, pending = row
        return ServerStatus(
            running=True,
            pid=pid,
            version=version.split()[0],
            port=port,
            data_dir=data_dir,
            uptime=datetime.now(UTC) - datetime.fromtimestamp(started, UTC),
            pending_restart=bool(pending),
            controls_process=self.controls_process,
        )

    def connect(
        self, dbname: str = "postgres", *, autocommit: bool = True, connect_timeout: int = 10
    ) -> psycopg.Connection:
        try:
            return psycopg.connect(
                self.uri(dbname), autocommit=autocommit, connect_timeout=connect_timeout
            )
        except psycopg.OperationalError as exc:
            hint = (
                "Start it with: manage.py server start"
                if self.controls_process
                else "Check MANAGED_DATABASE_URL and that the server is up"
            )
            raise ServerError(
                f"Cannot connect to the managed server at {display_uri(self.uri(dbname))}: "
                f"{str(exc).strip()}. {hint}."
            ) from exc

    # -- internals ---------------------------------------------------------------------------

    def _require_control(self, action: str) -> None:
        if not self.controls_process:
            raise ServerError(
                f"Cannot {action} the managed server: it is external (MANAGED_DATABASE_URL) "
                f"and its process is not controlled from here. {action.capitalize()} it where it "
                "runs (e.g. systemctl, docker compose, or your cloud console)."
            )

    def _system_user(self) -> pwd.struct_passwd | None:
        """The account PostgreSQL runs as, when we are root; None means our own account."""
        if os.geteuid() != 0:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pgserver.utils import ensure_user_exists

        return ensure_user_exists(SYSTEM_USER)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialize lifecycle actions of several processes on the same VAR_DIR."""
        self.var_dir.mkdir(parents=True, exist_ok=True)
        with open(self.var_dir / ".managed-pg.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _postmaster_pid(self) -> int | None:
        """The postmaster's pid if the server of this data directory runs, else None."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().splitlines()[0]
            pid = int(first)
            proc = psutil.Process(pid)
            # A stale pid file may name a pid that now belongs to something else.
            if "postgres" not in proc.name() or proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except (OSError, IndexError, ValueError, psutil.Error):
            return None
        return pid

    def _check_module_installed(self) -> None:
        library = module_library_path()
        if not library.exists():
            raise ServerError(
                f"The {MODULE_NAME} module is not installed in the embedded PostgreSQL "
                f"({library} is missing), and the server cannot start without it because "
                "it is in shared_preload_libraries. Build and install it with: make extension"
            )

    def _prepare_directories(self) -> None:
        for path in (self.data_dir, self.log_file.parent, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # PostgreSQL refuses a group- or world-readable data dir
        self.log_file.touch(exist_ok=True)
        user = self._system_user()
        if user is None:
            return
        from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions

        # The server account must traverse to its directories and run the binaries.
        for path in (self.data_dir, self.socket_dir, self.log_file, pg_bin_dir()):
            ensure_prefix_permissions(path)
        ensure_folder_permissions(pg_bin_dir(), 0o055)
        ensure_folder_permissions(pg_bin_dir().parent / "lib", 0o044)
        ensure_folder_permissions(pg_bin_dir().parent / "share", 0o044)
        for path in (self.data_dir, self.socket_dir, self.log_file):
            os.chown(path, user.pw_uid, user.pw_gid)

    def _run(self, args: list[str], what: str) -> None:
        user = self._system_user()
        # Files, not pipes: the postmaster started by pg_ctl inherits its output handles, and
        # a pipe it keeps open would make us wait for the server's exit.
        with tempfile.TemporaryFile("w+") as output:
            try:
                subprocess.run(
                    args,
                    check=True,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    text=True,
                    user=user.pw_uid if user else None,
                    group=user.pw_gid if user else None,
                    cwd=self.data_dir,
                    timeout=_START_TIMEOUT_S + 30,
                )
            except subprocess.CalledProcessError as exc:
                output.seek(0)
                raise ServerError(
                    f"{what} failed (exit {exc.returncode}): {output.read().strip()}\n"
                    f"{self._log_tail()}"
                ) from exc
            except subprocess.TimeoutExpired as exc:
                raise ServerError(f"{what} did not finish in time.\n{self._log_tail()}") from exc

    def _initdb(self) -> None:
        self._run(
            [
                str(pg_bin_dir() / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-instructions",
            ],
            "initdb of the managed server",
        )
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# Settings managed by the console (rewritten on every start).\n"
                f"include_if_exists = '{MANAGED_CONF}'\n"
            )

    def _write_managed_conf(self) -> None:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "shared_preload_libraries": MODULE_NAME,
            "azure_local_ai.service_url": self.service_url,
        }
        if self.service_token:
            settings["azure_local_ai.service_token"] = self.service_token
        lines = [
            "# Written by the console's managed-server lifecycle on every start; edits here",
            "# are overwritten. Other parameters belong in the Server parameters blade.",
        ]
        lines += [f"{key} = {_conf_quote(value)}" for key, value in settings.items()]
        target = self.data_dir / MANAGED_CONF
        target.write_text("\n".join(lines) + "\n")
        user = self._system_user()
        if user is not None:
            os.chown(target, user.pw_uid, user.pw_gid)

    def _pg_ctl_start(self) -> None:
        # Checked first: PostgreSQL's own message for a taken port is buried in its log.
        if not _port_free(self.port):
            raise ServerError(
                f"Cannot start the managed server: port {self.port} on 127.0.0.1 is in use. "
                "Stop what uses it, or set MANAGED_PG_PORT to a free port."
            )
        self._run(
            [
                str(pg_bin_dir() / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-w",
                "-t",
                str(_START_TIMEOUT_S),
                "-l",
                str(self.log_file),
                "start",
            ],
            "pg_ctl start",
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.uri(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                time.sleep(0.1)
        raise ServerError(f"The managed server did not accept connections.\n{self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            tail = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"(no server log at {self.log_file})"
        return f"Last lines of {self.log_file}:\n" + "\n".join(tail)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As PostgreSQL does: closed connections lingering in TIME_WAIT do not block a listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def get_managed_server() -> ManagedServer:
    """The managed server configured by the environment (see the module docstring)."""
    return ManagedServer(
        var_dir=var_dir(),
        port=env_int("MANAGED_PG_PORT", 5433),
        database_url=env_str("MANAGED_DATABASE_URL", ""),
        service_url=module_service_url(),
        service_token=inference_token(),
    )


def connect(dbname: str = "postgres", autocommit: bool = True) -> psycopg.Connection:
    """A superuser connection to ``dbname`` on the managed server."""
    return get_managed_server().connect(dbname, autocommit=autocommit)
