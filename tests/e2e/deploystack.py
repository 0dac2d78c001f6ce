"""The deployment path behind a browser, all real: a ``manage.py runserver`` console and a
Celery worker sharing one SQLite console database, the session's sidecar and managed server
(``managed_pg``), and a FakeHub serving the e5-like repository, throttled so that the
download's progress shows for a few seconds."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from serverparams.server import ManagedServer
from tests.console.stack import (
    E5_FROM_FAKE_HUB,
    E5_URI,
    Worker,
    deploy_catalog,
    fresh_deployment_state,
)
from tests.e2e.conftest import running_console, signed_in_page
from tests.fixtures.fakehub import FakeHub, publish_e5_repo
from tests.fixtures.sidecar import SidecarProcess

# The generated graph is about 32 KB: at this rate its download takes five seconds or so.
FETCH_BYTES_PER_S = 6_000


@dataclass(frozen=True)
class DeployConsole:
    url: str
    server: ManagedServer
    sidecar: SidecarProcess
    hub: FakeHub
    worker: Worker
    web_log: Path
    models_dir: Path

    def logs(self) -> str:
        """The tails of the console's and the worker's logs, for failure messages."""
        web = self.web_log.read_text(errors="replace")[-4000:]
        return f"console log:\n{web}\nworker log:\n{self.worker.log()[-6000:]}"


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
    extra = {
        "INFERENCE_CATALOG": str(deploy_catalog(tmp_path / "catalog.json", E5_FROM_FAKE_HUB)),
        "DEFAULT_MODEL": E5_URI,
        "CELERY_QUEUE": queue,
        "HF_ENDPOINT": fake_hub.endpoint,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_OFFLINE": "",
    }
    with (
        fresh_deployment_state(managed_pg, sidecar) as models_dir,
        running_console(managed_pg, sidecar.url, tmp_path, extra) as console,
    ):
        worker = Worker(env=console.env, log_path=tmp_path / "worker.log", queue=queue)
        try:
            worker.start()
            yield DeployConsole(
                console.url, managed_pg, sidecar, fake_hub, worker, console.log_path, models_dir
            )
        finally:
            worker.stop()


@pytest.fixture
def deploy_page(browser: Browser, deploy_console: DeployConsole) -> Iterator[Page]:
    """A page signed in to ``deploy_console`` as the admin, on Server parameters."""
    with signed_in_page(browser, deploy_console.url) as page:
        yield page
