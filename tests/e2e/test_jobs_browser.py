"""The Jobs page in a real browser, all real: a ``manage.py runserver`` console and a Celery
worker sharing its console database, the session's sidecar (``tiny:v1``) and managed server.
A job created through the form fills a table of a few hundred rows while its page follows
without a reload, then stops polling; rows inserted later are counted; the bell tells of the
finished backfill; pause and resume work from the command bar; Recount puts a skewed row count
right."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Request, expect

from serverparams.server import ManagedServer
from tests.console.jobstack import CLS_URI
from tests.console.stack import (
    Worker,
    deploy_catalog,
    drop_database,
    fresh_deployment_state,
    scratch_database,
)
from tests.e2e.conftest import running_console, signed_in_page
from tests.fixtures.pg import allow_extensions
from tests.fixtures.realmodel import tiny_entry
from tests.fixtures.sidecar import TINY_URI, SidecarProcess

pytestmark = pytest.mark.browser

ROWS = 300
JOB_TIMEOUT_MS = 60_000
IDLE = '#job-watch[data-live="0"]'


@dataclass(frozen=True)
class JobsConsole:
    url: str
    server: ManagedServer
    database: str
    worker: Worker
    web_log: Path

    def sql(self, query: str) -> None:
        with self.server.connect(self.database) as conn:
            conn.execute(query)

    def logs(self) -> str:
        web = self.web_log.read_text(errors="replace")[-4000:]
        return f"console log:\n{web}\nworker log:\n{self.worker.log()[-6000:]}"


@pytest.fixture
def jobs_console(
    managed_pg: ManagedServer, sidecar: SidecarProcess, tmp_path: Path, cls_model: str
) -> Iterator[JobsConsole]:
    """The console and a worker configured alike, with a catalog that knows ``tiny:v1``,
    VECTOR and AZURE_LOCAL_AI allowed, and a scratch database holding ``docs`` (``ROWS``
    rows); afterwards the database goes and the allowlist is put back."""
    queue = f"tests-{uuid.uuid4().hex[:8]}"
    database = f"jobs_{uuid.uuid4().hex[:8]}"
    extra = {
        "INFERENCE_CATALOG": str(
            deploy_catalog(
                tmp_path / "catalog.json",
                tiny_entry(uri=TINY_URI),
                tiny_entry(uri=CLS_URI, pooling="cls", title="Tiny test model, CLS pooling"),
            )
        ),
        "CELERY_QUEUE": queue,
        "HF_HUB_OFFLINE": "1",
    }
    with fresh_deployment_state(managed_pg, sidecar):
        with managed_pg.connect() as conn:
            allow_extensions(conn, "vector", "azure_local_ai")
        scratch_database(managed_pg, database)
        with managed_pg.connect(database) as conn:
            conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, title text, body text)")
            conn.execute(
                "INSERT INTO docs SELECT i, 'title ' || i, 'the body of document ' || i"
                " FROM generate_series(1, %s) i",
                [ROWS],
            )
        try:
            with running_console(managed_pg, sidecar.url, tmp_path, extra) as console:
                worker = Worker(env=console.env, log_path=tmp_path / "worker.log", queue=queue)
                try:
                    worker.start()
                    yield JobsConsole(console.url, managed_pg, database, worker, console.log_path)
                finally:
                    worker.stop()
        finally:
            drop_database(managed_pg, database)


def _counts(page: Page) -> tuple[int, int, int]:
    """done, total, pending as the page shows them."""
    return tuple(  # type: ignore[return-value]
        int(page.locator(f"#job-{name}").get_attribute("data-value") or -1)
        for name in ("done", "total", "pending")
    )


def test_a_job_created_in_the_form_fills_the_table_and_its_page_follows_it(
    browser: Browser, jobs_console: JobsConsole, screenshots: Path
) -> None:
    console = jobs_console
    with signed_in_page(browser, console.url) as page:
        page.get_by_role("navigation", name="Resource menu").get_by_role(
            "link", name="Jobs"
        ).click()
        expect(page.locator("#job-table")).to_contain_text("No embedding jobs")
        page.locator("#cmd-new-job").click()
        expect(page.get_by_role("heading", name="New embedding job")).to_be_visible()

        # A typo in the table's name: the server's answer comes back beside the field, and
        # what was typed stays.
        page.get_by_label("Database", exact=True).select_option(console.database)
        page.get_by_label("Table", exact=True).fill("public.doc")
        page.get_by_label("Text columns").fill("title, body")
        page.get_by_label("Format", exact=True).fill("{title}: {body}")
        page.get_by_label("Model", exact=True).select_option(TINY_URI)
        page.get_by_label("Batch size").fill("16")
        page.locator("#create-job").click()
        expect(page.locator("#field-table .row-error")).to_have_text(
            "there is no table public.doc in this database"
        )
        expect(page.get_by_label("Text columns")).to_have_value("title, body")
        expect(page.get_by_label("Database", exact=True)).to_have_value(console.database)
        page.screenshot(path=str(screenshots / "jobs-1-form-error.png"), full_page=True)

        page.get_by_label("Table", exact=True).fill("public.docs")
        page.locator("#create-job").click()
        page.wait_for_url(re.compile(r"/jobs/\d+/$"))
        detail_path = page.url.removeprefix(console.url)
        expect(page.locator(".job-messages")).to_contain_text(f"{ROWS} rows of public.docs queued")

        # From here on the page is updated by htmx alone: a reload would drop this mark.
        page.evaluate("window.notReloaded = true")
        polls: list[str] = []

        def count_poll(request: Request) -> None:
            if request.url.endswith(detail_path):
                polls.append(request.url)

        page.on("request", count_poll)
        page.screenshot(path=str(screenshots / "jobs-2-backfilling.png"))
        expect(page.locator("#job-percent")).to_have_text("100%", timeout=JOB_TIMEOUT_MS)
        expect(page.locator(IDLE)).to_be_attached(timeout=JOB_TIMEOUT_MS)
        assert _counts(page) == (ROWS, ROWS, 0), console.logs()
        assert page.evaluate("window.notReloaded") is True
        assert polls, "the job's page never polled"
        expect(page.locator("#job-status")).to_have_text("In sync")
        expect(page.locator("#job-eta")).to_have_text("done")
        expect(page.locator("#job-backfill")).to_contain_text("Finished")
        # Idle: the last answer carries no trigger, and nothing polls any more.
        expect(page.locator('#job-body [hx-trigger*="every"]')).to_have_count(0)
        polled = len(polls)
        page.wait_for_timeout(2500)
        assert len(polls) == polled, "the page still polls an idle job"
        page.screenshot(path=str(screenshots / "jobs-3-in-sync.png"), full_page=True)

        # Rows inserted with SQL: the triggers queue them, and the page counts them.
        console.sql(
            "INSERT INTO docs SELECT i, 'later ' || i, 'inserted afterwards ' || i"
            f" FROM generate_series({ROWS + 1}, {ROWS + 40}) i"
        )
        page.locator("#cmd-refresh").click()
        expect(page.locator("#job-done")).to_have_attribute(
            "data-value", str(ROWS + 40), timeout=JOB_TIMEOUT_MS
        )
        expect(page.locator(IDLE)).to_be_attached(timeout=JOB_TIMEOUT_MS)
        assert _counts(page) == (ROWS + 40, ROWS + 40, 0)
        assert page.evaluate("window.notReloaded") is True

        # Embedded on the workers from now on: rows that change go to the worker's sidecar
        # (here the same one), and the page says who embedded what.
        page.locator("#switch-embed-on").click()
        expect(page.locator(".job-messages")).to_contain_text("now embeds on the workers")
        expect(page.locator("#job-embed-on")).to_contain_text("The workers")
        console.sql("UPDATE docs SET body = body || ' (changed)' WHERE id <= 20")
        page.locator("#cmd-refresh").click()  # pending again: the page polls until in sync
        expect(page.locator("#job-embedders")).to_contain_text(
            console.worker.hostname, timeout=JOB_TIMEOUT_MS
        )
        expect(page.locator("#job-embedders")).to_contain_text("server")
        expect(page.locator("#job-refusals")).to_have_count(0)
        page.screenshot(path=str(screenshots / "jobs-3b-on-workers.png"), full_page=True)

        # The bell, refreshed while the backfill ran, tells it finished and leads here.
        bell = page.locator("details.notifications")
        expect(bell.locator("summary")).not_to_have_attribute("aria-label", re.compile("running"))
        bell.locator("summary").click()
        note = bell.get_by_role("region", name="Notifications").locator(".note").first
        expect(note).to_contain_text(f"Backfill finished: public.docs → embedding, {ROWS} rows")
        expect(note.get_by_role("link")).to_have_attribute("href", detail_path)
        page.screenshot(path=str(screenshots / "jobs-4-bell.png"))
        bell.locator("summary").click()

        # Paused, new rows wait in the queue; resumed, they are embedded.
        page.locator("#cmd-pause").click()
        expect(page.locator("#job-status")).to_have_text("Paused")
        expect(page.locator(".job-messages")).to_contain_text("paused")
        time.sleep(1.5)  # the runner's batch loop sees the pause
        console.sql(
            "INSERT INTO docs SELECT i, 'paused ' || i, 'while paused ' || i"
            f" FROM generate_series({ROWS + 41}, {ROWS + 50}) i"
        )
        page.locator("#cmd-refresh").click()
        expect(page.locator("#job-pending")).to_have_attribute("data-value", "10")
        expect(page.locator(IDLE)).to_be_attached()
        assert _counts(page) == (ROWS + 40, ROWS + 50, 10)
        page.screenshot(path=str(screenshots / "jobs-5-paused.png"), full_page=True)
        page.locator("#cmd-resume").click()
        expect(page.locator("#job-done")).to_have_attribute(
            "data-value", str(ROWS + 50), timeout=JOB_TIMEOUT_MS
        )
        expect(page.locator("#job-status")).to_have_text("In sync", timeout=JOB_TIMEOUT_MS)

        # Another model: every row is embedded again, and the page says with which.
        card = page.locator("#change-model")
        card.get_by_label("New model").select_option(CLS_URI)
        card.get_by_role("button", name="Embed again with this model").click()
        expect(page.locator(".job-messages")).to_contain_text(f"again with {CLS_URI}")
        expect(page.locator("#job-status")).to_have_text("In sync", timeout=JOB_TIMEOUT_MS)
        expect(page.locator(".job-summary")).to_contain_text(f"rows embedded with {CLS_URI}")
        page.reload()
        expect(page.locator("#change-model")).to_contain_text(TINY_URI)  # and back again

        # The row count, skewed behind the job's back, is put right by Recount.
        job_id = int(detail_path.strip("/").split("/")[-1])
        console.sql(f"UPDATE embedding_jobs.job_{job_id}_counts SET rows = rows + 7 WHERE id = 0")
        page.locator("#cmd-refresh").click()
        expect(page.locator("#job-total")).to_have_attribute("data-value", str(ROWS + 57))
        page.locator("#recount").click()
        expect(page.locator(".job-messages")).to_contain_text(
            f"Recounted public.docs: {ROWS + 50} rows; the job's counts said {ROWS + 57}"
        )
        expect(page.locator("#job-total")).to_have_attribute("data-value", str(ROWS + 50))
        expect(page.locator("#job-counted")).to_contain_text("last counted row by row just now")
        page.screenshot(path=str(screenshots / "jobs-8-model-changed.png"), full_page=True)

        # Delete asks first, offering to drop the vectors too; cancelled, nothing happens.
        page.locator("#cmd-delete").click()
        dialog = page.locator("#dialog-host").get_by_role("dialog")
        expect(dialog).to_be_visible()
        expect(dialog.get_by_label("Also drop the vector column")).not_to_be_checked()
        page.screenshot(path=str(screenshots / "jobs-6-delete.png"))
        dialog.get_by_role("button", name="Cancel").click()
        expect(dialog).to_be_hidden()

        page.get_by_role("navigation", name="Breadcrumb").get_by_role("link", name="Jobs").click()
        row = page.locator("tr.job-row")
        expect(row).to_have_count(1)
        expect(row).to_contain_text(f"{ROWS + 50} / {ROWS + 50} (100%)")
        expect(row).to_contain_text("In sync")
        page.screenshot(path=str(screenshots / "jobs-7-list.png"))
