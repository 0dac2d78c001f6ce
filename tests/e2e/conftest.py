"""Browser tests: the console served by a real ``manage.py runserver`` process, pointed at a
real managed server, driven in Debian's Chromium with Playwright."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from inference.process import ChildProcess, http_ready
from serverparams.server import ManagedServer
from tests.console.jobstack import cls_model  # noqa: F401  (the fixture)
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


CONSOLE_START_S = 60.0


@dataclass(frozen=True)
class Console:
    url: str
    server: ManagedServer
    log_path: Path
    env: dict[str, str] = field(default_factory=dict, repr=False)  # its whole environment


@contextlib.contextmanager
def running_console(
    server: ManagedServer,
    inference_url: str,
    workdir: Path,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[Console]:
    """``manage.py runserver --noreload`` on a free port against ``server`` and the sidecar at
    ``inference_url``, with a console database of its own in ``workdir`` and a signed-up
    admin; ``extra_env`` adds to its environment."""
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{workdir / 'console.sqlite3'}",
        "VAR_DIR": str(server.var_dir),
        "MANAGED_PG_PORT": str(server.port),
        "INFERENCE_URL": inference_url,
        "INFERENCE_TOKEN": "",
        "DJANGO_SUPERUSER_USERNAME": ADMIN_USER,
        "DJANGO_SUPERUSER_PASSWORD": ADMIN_PASSWORD,
        "DJANGO_SUPERUSER_EMAIL": "admin@example.com",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    env.pop("MANAGED_DATABASE_URL", None)
    manage = [sys.executable, "manage.py"]
    for command in (["migrate", "--noinput"], ["createsuperuser", "--noinput"]):
        subprocess.run(
            [*manage, *command], cwd=PROJECT_ROOT, env=env, check=True, capture_output=True
        )
    url = f"http://127.0.0.1:{free_port()}"
    web = ChildProcess(
        "console",
        [*manage, "runserver", "--noreload", url.removeprefix("http://")],
        workdir / "runserver.log",
        env=env,
        cwd=PROJECT_ROOT,
    )
    try:
        web.wait_ready(http_ready(f"{url}/accounts/login/"), CONSOLE_START_S)
        yield Console(url=url, server=server, log_path=web.log_path, env=env)
    finally:
        web.stop()


@pytest.fixture(scope="session")
def console(
    console_pg: ManagedServer,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Console]:
    """The console on the console tests' server; no sidecar listens at its INFERENCE_URL."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    with running_console(console_pg, nowhere, tmp_path_factory.mktemp("console")) as console:
        yield console


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
