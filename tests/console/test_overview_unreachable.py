"""The overview renders, saying what cannot be reached, when the sidecar or the server hangs."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

# Far above the page's own timeouts: this checks that the page does not hang, not its speed.
HANG_BOUND_S = 10


@pytest.fixture
def hung_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers: nothing
    accepts or reads them."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@pytest.fixture
def stopped_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An embedded managed server that is not running: the overview says so at once."""
    monkeypatch.setenv("VAR_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("MANAGED_DATABASE_URL", raising=False)


def timed_get(client: Client, url: str) -> tuple[str, float]:
    start = time.monotonic()
    response = client.get(url)
    elapsed = time.monotonic() - start
    assert response.status_code == 200
    return response.content.decode(), elapsed


def test_a_hung_sidecar_shows_as_unreachable_without_hanging_the_overview(
    admin_client: Client,
    hung_port: int,
    stopped_server: None,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    settings.INFERENCE_URL = f"http://127.0.0.1:{hung_port}"
    page, elapsed = timed_get(admin_client, "/")
    assert "Unreachable</span>" in page
    assert "no answer in time" in page
    assert elapsed < HANG_BOUND_S, f"the overview took {elapsed:.1f} s"


def test_a_hung_server_shows_as_not_reachable_without_hanging_the_overview(
    admin_client: Client,
    hung_port: int,
    monkeypatch: pytest.MonkeyPatch,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setenv("MANAGED_DATABASE_URL", f"postgresql://postgres@127.0.0.1:{hung_port}/db")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: the sidecar is refused at once
        settings.INFERENCE_URL = f"http://127.0.0.1:{closed.getsockname()[1]}"
        page, elapsed = timed_get(admin_client, "/")
    assert "Cannot connect to the managed server at" in page
    assert f"127.0.0.1:{hung_port}" in page
    assert "Stopped</span>" in page
    assert elapsed < HANG_BOUND_S, f"the overview took {elapsed:.1f} s"
