"""Browser tests: the console served by a real ``manage.py runserver`` process, pointed at a
real managed server, driven in Debian's Chromium with Playwright."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from serverparams.server import ManagedServer
from tests.console.servers import (
    auto_conf,
    console_pg,  # noqa: F401  (the fixture)
    restore_auto_conf,
)
from tests.fixtures.pg import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ADMIN_USER = "admin"
ADMIN_PASSWORD = "browser-tests-only-password"


@dataclass(frozen=True)
class Console:
    url: str
    server: ManagedServer
    log_path: Path


@pytest.fixture(scope="session")
def console(
    console_pg: ManagedServer,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Console]:
    """``manage.py runserver --noreload`` on a free port, with a signed-up admin."""
    port = free_port()
    env = {
        **os.environ,
        "VAR_DIR": str(console_pg.var_dir),
        "MANAGED_PG_PORT": str(console_pg.port),
        "INFERENCE_URL": f"http://127.0.0.1:{free_port()}",
        "DJANGO_SUPERUSER_USERNAME": ADMIN_USER,
        "DJANGO_SUPERUSER_PASSWORD": ADMIN_PASSWORD,
        "DJANGO_SUPERUSER_EMAIL": "admin@example.com",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("MANAGED_DATABASE_URL", None)
    manage = [sys.executable, "manage.py"]
    for command in (["migrate", "--noinput"], ["createsuperuser", "--noinput"]):
        subprocess.run(
            [*manage, *command], cwd=PROJECT_ROOT, env=env, check=True, capture_output=True
        )
    log_path = tmp_path_factory.mktemp("console-log") / "runserver.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*manage, "runserver", "--noreload", f"127.0.0.1:{port}"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/accounts/login/", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the console did not start; its log:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield Console(url=url, server=console_pg, log_path=log_path)
    finally:
        process.terminate()
        process.wait(timeout=30)


# Package scope: Playwright's sync API runs an event loop in the main thread while it is
# open, which would break asyncio.run() in the tests collected after this package.
@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make sysdeps-test)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextlib.contextmanager
def signed_in_page(browser: Browser, url: str) -> Iterator[Page]:
    """A page of the console at ``url``, signed in as the admin, on Server parameters."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{url}/parameters/")
    page.get_by_label("User name").fill(ADMIN_USER)
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{url}/parameters/")
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def page(browser: Browser, console: Console) -> Iterator[Page]:
    """A signed-in page; every parameter the test changes is restored afterwards."""
    with console.server.connect() as conn:
        snapshot = auto_conf(conn)
    try:
        with signed_in_page(browser, console.url) as page:
            yield page
    finally:
        with console.server.connect() as conn:
            restore_auto_conf(conn, snapshot)


@pytest.fixture(scope="session")
def screenshots(session_var_dir: Path) -> Iterator[Path]:
    """Screenshots land in the session's VAR_DIR, and are copied to the repository's var/."""
    directory = session_var_dir / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    yield directory
    shown = PROJECT_ROOT / "var" / "screenshots"
    shown.mkdir(parents=True, exist_ok=True)
    for shot in directory.glob("*.png"):
        shutil.copy2(shot, shown / shot.name)
