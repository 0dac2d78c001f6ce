"""The launcher of child processes: readiness, failures that show the log, stop and kill."""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

import pytest

from inference.process import ChildProcess, StartError, http_ready, start_sidecar


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_wait_ready_returns_once_the_probe_holds(tmp_path: Path) -> None:
    marker = tmp_path / "ready"
    child = ChildProcess(
        "writer",
        python(f"import pathlib, time; pathlib.Path({str(marker)!r}).touch(); time.sleep(60)"),
        tmp_path / "writer.log",
    )
    try:
        child.wait_ready(marker.exists, timeout=30)
        assert child.alive()
    finally:
        assert child.stop() == -signal.SIGTERM
    assert not child.alive()


def test_a_child_that_exits_fails_with_the_tail_of_its_log(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "crash.log"
    log.parent.mkdir()
    log.write_text("an earlier run's line\n")
    child = ChildProcess("crash", python("print('bad config: port'); raise SystemExit(3)"), log)
    with pytest.raises(StartError) as excinfo:
        child.wait_ready(lambda: False, timeout=30)
    message = str(excinfo.value)
    assert "crash exited with status 3" in message
    assert str(log) in message and "bad config: port" in message
    # Only this child's output: the log's earlier content stays in the file.
    assert "earlier" not in message and "earlier" not in child.output()
    assert "an earlier run's line" in log.read_text()


def test_a_child_never_ready_times_out_and_keeps_running(tmp_path: Path) -> None:
    child = ChildProcess(
        "slow",
        python("import time; print('still warming', flush=True); time.sleep(60)"),
        tmp_path / "slow.log",
    )
    try:
        with pytest.raises(StartError) as excinfo:
            child.wait_ready(lambda: False, timeout=0.5)
        assert "slow was not ready within 0.5 s" in str(excinfo.value)
        assert child.alive()
    finally:
        child.kill()


def test_stop_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ignoring', flush=True); time.sleep(60)"
    )
    child = ChildProcess("stubborn", python(code), tmp_path / "stubborn.log")
    child.wait_ready(lambda: "ignoring" in child.output(), timeout=30)
    assert child.stop(grace=0.5) == -signal.SIGKILL
    assert child.kill() == -signal.SIGKILL  # already gone: nothing more happens


def test_a_missing_program_is_a_start_error(tmp_path: Path) -> None:
    with pytest.raises(StartError, match=r"cannot start ghost \(/nonexistent/ghost\)"):
        ChildProcess("ghost", ["/nonexistent/ghost"], tmp_path / "ghost.log")


def test_http_ready_is_false_where_nothing_answers() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        assert http_ready(f"http://127.0.0.1:{port}/health", timeout=1)() is False


def test_a_sidecar_on_a_taken_port_fails_with_its_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartError) as excinfo:
            start_sidecar(tmp_path / "var", port=port, timeout=60)
    assert "already in use" in str(excinfo.value)
    assert str(tmp_path / "var" / "log" / "inference.log") in str(excinfo.value)


def test_a_sidecar_on_a_unix_socket(tmp_path: Path) -> None:
    sidecar = start_sidecar(tmp_path / "var", uds=tmp_path / "s.sock", token="t0ken")
    try:
        assert sidecar.url == f"unix:{tmp_path / 's.sock'}"
        assert sidecar.port is None and sidecar.token == "t0ken"
        assert sidecar.client.models() == []  # the token went to both ends
    finally:
        assert sidecar.stop() in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in sidecar.log()
