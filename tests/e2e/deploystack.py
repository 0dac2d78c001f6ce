"""The deployment path behind a browser, all real: a ``manage.py runserver`` console and a
Celery worker sharing one SQLite console database, the session's sidecar and managed server
(``managed_pg``), and a FakeHub serving the e5-like repository, throttled so that the
download's progress shows for a few seconds."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page

from inference.process import ChildProcess
from serverparams.server import ManagedServer
from tests.console.stack import (
    E5_FROM_FAKE_HUB,
    E5_URI,
    Worker,
    deploy_catalog,
    fresh_deployment_state,
)
from tests.e2e.conftest import ADMIN_PASSWORD, ADMIN_USER, PROJECT_ROOT, signed_in_page
from tests.fixtures.fakehub import FakeHub, publish_e5_repo
from tests.fixtures.pg import free_port
from tests.fixtures.sidecar import SidecarProcess

CONSOLE_START_S = 60.0
# The generated graph is about 32 KB: at this rate its download takes five seconds or so.
FETCH_BYTES_PER_S = 6_000


@dataclass(frozen=True)
class DeployConsole:
    url: str
    server: ManagedServer
    sidecar: SidecarProcess
    hub: FakeHub
    worker: Worker
    web: ChildProcess
    models_dir: Path

    def logs(self) -> str:
        """The tails of the console's and the worker's logs, for failure messages."""
        web = self.web.log_path.read_text(errors="replace")[-4000:]
        return f"console log:\n{web}\nworker log:\n{self.worker.log()[-6000:]}"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def deploy_console(
    managed_pg: ManagedServer,
    sidecar: SidecarProcess,
    fake_hub: FakeHub,
    tmp_path: Path,
) -> Iterator[DeployConsole]:
    """The console and a worker configured alike, with ``multilingual-e5-small:v1`` (the tiny
    model's shape, from the FakeHub) as the model enabling AZURE_LOCAL_AI deploys; afterwards
    the allowlist, the sidecar's registrations and the model store are as they were."""
    publish_e5_repo(fake_hub, tmp_path / "e5-repo")
    fake_hub.throttle_bytes_per_s = FETCH_BYTES_PER_S
    queue = f"tests-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'console.sqlite3'}",
        "VAR_DIR": str(managed_pg.var_dir),
        "MANAGED_PG_PORT": str(managed_pg.port),
        "INFERENCE_URL": sidecar.url,
        "INFERENCE_TOKEN": "",
        "INFERENCE_CATALOG": str(deploy_catalog(tmp_path / "catalog.json", E5_FROM_FAKE_HUB)),
        "DEFAULT_MODEL": E5_URI,
        "CELERY_QUEUE": queue,
        "HF_ENDPOINT": fake_hub.endpoint,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_OFFLINE": "",
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
    url = f"http://127.0.0.1:{free_port()}"
    worker = Worker(env=env, log_path=tmp_path / "worker.log", queue=queue)
    with fresh_deployment_state(managed_pg, sidecar) as models_dir:
        web = ChildProcess(
            "console",
            [*manage, "runserver", "--noreload", url.removeprefix("http://")],
            tmp_path / "runserver.log",
            env=env,
            cwd=PROJECT_ROOT,
        )
        try:
            worker.start()
            web.wait_ready(lambda: _answers(f"{url}/accounts/login/"), CONSOLE_START_S)
            yield DeployConsole(url, managed_pg, sidecar, fake_hub, worker, web, models_dir)
        finally:
            web.stop()
            worker.stop()


@pytest.fixture
def deploy_page(browser: Browser, deploy_console: DeployConsole) -> Iterator[Page]:
    """A page signed in to ``deploy_console`` as the admin, on Server parameters."""
    with signed_in_page(browser, deploy_console.url) as page:
        yield page
