"""Child processes this project starts and waits for: the inference sidecar and, under
``manage.py up``, Redis, the Celery worker and the console.

    child = ChildProcess("web", argv, log_dir / "web.log")
    child.wait_ready(http_ready("http://127.0.0.1:8000/accounts/login/"), timeout=60)
    ...
    child.stop()

    sidecar = start_sidecar(var_dir)  # a free port; returns once /health answers
    sidecar.client.register("tiny:v1", "/path/to/model")
    sidecar.stop()
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from inference import config
from inference.client import InferenceClient

SIDECAR_START_TIMEOUT_S = 120.0
_POLL_S = 0.1
_TAIL_BYTES = 64 * 1024


class StartError(RuntimeError):
    """A child could not start or was not ready in time; the message ends with its log's tail."""


class ChildProcess:
    """A process started at once, its stdout and stderr appended to ``log_path``.

    ``env`` is its whole environment (default: this process's), ``cwd`` its working directory
    (default: this process's).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            # The log may hold earlier runs' output: this child's starts here.
            self._log_offset = log.seek(0, os.SEEK_END)
            try:
                self.process = subprocess.Popen(
                    list(argv),
                    env=None if env is None else dict(env),
                    cwd=cwd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            except OSError as exc:
                raise StartError(f"cannot start {name} ({argv[0]}): {exc}") from exc

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, or None while it runs (negative: killed by that signal)."""
        return self.process.poll()

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, probe: Callable[[], bool], timeout: float) -> None:
        """Poll ``probe`` until it returns true.

        Raises StartError, with the tail of the log, if the process exits first or ``timeout``
        seconds pass; the process is left as it is (stop it if it still runs).
        """
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise StartError(
                    f"{self.name} exited with status {self.returncode} before it was ready; "
                    f"{self._tail_report()}"
                )
            if probe():
                return
            if time.monotonic() > deadline:
                raise StartError(
                    f"{self.name} was not ready within {timeout:g} s; {self._tail_report()}"
                )
            time.sleep(_POLL_S)

    def stop(self, grace: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited after ``grace`` seconds; the exit status."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def kill(self) -> int:
        """SIGKILL, as a crash would; the exit status."""
        if self.alive():
            self.process.kill()
        return self.process.wait()

    def output(self) -> str:
        """Everything this child wrote to its log."""
        return self._read_log(self._log_offset)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines this child wrote to its log."""
        try:
            size = self.log_path.stat().st_size
        except OSError:
            return ""
        text = self._read_log(max(self._log_offset, size - _TAIL_BYTES))
        return "\n".join(text.splitlines()[-lines:])

    def _read_log(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _tail_report(self) -> str:
        tail = self.log_tail()
        if not tail:
            return f"it wrote nothing to {self.log_path}"
        return f"last lines of {self.log_path}:\n{tail}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now; someone else may still take it before it is bound."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def http_ready(url: str, *, uds: str | None = None, timeout: float = 2.0) -> Callable[[], bool]:
    """A probe for ``wait_ready``: true once a GET of ``url`` answers without an error status.

    With ``uds``, the request goes over that Unix socket (the host in ``url`` is then ignored).
    """

    def probe() -> bool:
        transport = httpx.HTTPTransport(uds=uds) if uds else None
        try:
            with httpx.Client(transport=transport, timeout=timeout) as client:
                return client.get(url).status_code < 400
        except httpx.HTTPError:
            return False

    return probe


@dataclass
class SidecarProcess:
    """A running ``python -m inference serve`` and a client for it; stop() or kill() it."""

    url: str  # http://host:port, or unix:/path for a Unix socket
    var_dir: Path
    process: ChildProcess
    port: int | None = None
    token: str | None = None
    client: InferenceClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = InferenceClient(self.url, token=self.token or "")

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def log(self) -> str:
        """Everything this sidecar wrote to its log."""
        return self.process.output()

    def stop(self, grace: float = 30.0) -> int:
        """Stop gracefully (SIGTERM, as a service manager would); the exit status."""
        self.client.close()
        return self.process.stop(grace)

    def kill(self) -> int:
        """Stop abruptly (SIGKILL), as a crash would; the exit status."""
        self.client.close()
        return self.process.kill()


def _all_ready(*probes: Callable[[], bool]) -> Callable[[], bool]:
    return lambda: all(probe() for probe in probes)


def start_sidecar(
    var_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    uds: Path | None = None,
    unix_socket: Path | None = None,
    token: str = "",
    env: Mapping[str, str] | None = None,
    log_dir: Path | None = None,
    timeout: float = SIDECAR_START_TIMEOUT_S,
) -> SidecarProcess:
    """Start a sidecar with its state in ``var_dir``; return once ``/health`` answers.

    It listens on the Unix socket ``uds`` if given, else on ``host:port``; with no port, on a
    free one, and on another if someone else takes that one first. With ``unix_socket`` it listens
    on that Unix socket too (for a PostgreSQL server on this machine). ``env`` is its environment
    (default: this process's) with ``VAR_DIR`` and ``INFERENCE_TOKEN`` set from ``var_dir`` and
    ``token`` (empty: no token). Its output goes to ``inference.log`` in ``log_dir`` (default:
    the log directory of ``var_dir``). If it does not start, it is stopped and StartError says why.
    """
    var_dir = Path(var_dir)
    var_dir.mkdir(parents=True, exist_ok=True)
    environment = {
        **(os.environ if env is None else env),
        "VAR_DIR": str(var_dir),
        "INFERENCE_TOKEN": token,
    }
    log_path = (config.log_dir(var_dir) if log_dir is None else Path(log_dir)) / "inference.log"
    attempts_left = 3 if port is None and uds is None else 1
    while True:
        attempts_left -= 1
        chosen = None
        if uds is not None:
            url, listen = f"unix:{uds}", ["--uds", str(uds)]
            probe = http_ready("http://sidecar/health", uds=str(uds))
        else:
            chosen = port or free_port(host)
            url, listen = f"http://{host}:{chosen}", ["--host", host, "--port", str(chosen)]
            if unix_socket is not None:
                listen += ["--socket", str(unix_socket)]
            probe = _all_ready(
                http_ready(f"{url}/health"),
                *(
                    (http_ready("http://sidecar/health", uds=str(unix_socket)),)
                    if unix_socket
                    else ()
                ),
            )
        child = ChildProcess(
            "inference",
            [sys.executable, "-m", "inference", "serve", *listen],
            log_path,
            env=environment,
            cwd=config.PROJECT_ROOT,
        )
        try:
            child.wait_ready(probe, timeout)
        except StartError:
            child.stop()
            # A free port may be taken by someone else before the sidecar binds it.
            if not attempts_left or "already in use" not in child.output():
                raise
        else:
            return SidecarProcess(url, var_dir, child, chosen, token or None)
