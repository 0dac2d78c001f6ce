"""The inference settings form in a real browser: a ``manage.py runserver`` console pointed at
the session's sidecar, and SQL through the managed server wired to the same sidecar."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import Browser, Page, expect

from serverparams.server import ManagedServer
from tests.console.test_inference_settings import sql_conn  # noqa: F401  (the fixture)
from tests.e2e.conftest import Console, running_console, signed_in_page
from tests.fixtures.sidecar import SidecarProcess

pytestmark = pytest.mark.browser


@pytest.fixture
def settings_console(
    managed_pg: ManagedServer, sidecar: SidecarProcess, tmp_path: Path
) -> Iterator[str]:
    """The console's URL, served against the session's sidecar and managed server; every
    sidecar setting is put back afterwards."""
    before = sidecar.client.settings()
    try:
        with running_console(managed_pg, sidecar.url, tmp_path) as console:
            yield console.url
    finally:
        sidecar.client.update_settings(before)


@pytest.fixture
def settings_page(browser: Browser, settings_console: str) -> Iterator[Page]:
    with signed_in_page(browser, settings_console) as page:
        page.goto(f"{settings_console}/settings/")
        yield page


def test_change_max_wait_ms_and_sql_sees_it(
    settings_page: Page,
    sidecar: SidecarProcess,
    sql_conn: psycopg.Connection,  # noqa: F811
    screenshots: Path,
) -> None:
    page = settings_page
    expect(
        page.get_by_role("heading", name="managed-postgres | Inference settings")
    ).to_be_visible()
    row = page.locator('tr[data-setting="max_wait_ms"]')
    field = page.get_by_label("max_wait_ms")
    expect(field).to_have_value("2")
    expect(row.get_by_text("Modified")).to_have_count(0)
    page.screenshot(path=str(screenshots / "settings-1-form.png"), full_page=True)

    # Refused first: the reason shows beside the field, and nothing is applied.
    field.fill("5000")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(row.locator(".row-error")).to_contain_text("Must be between 0 and 1,000 ms.")
    expect(page.locator("#settings-errors")).to_contain_text("Nothing was applied")
    assert sidecar.client.settings()["max_wait_ms"] == 2
    page.screenshot(path=str(screenshots / "settings-3-refused.png"))

    # Discard drops the edit and the error, showing the sidecar's value again.
    page.get_by_role("button", name="Discard").click()
    expect(row.locator(".row-error")).to_have_count(0)
    expect(page.get_by_label("max_wait_ms")).to_have_value("2")

    page.get_by_label("max_wait_ms").fill("5")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator("#blade-messages")).to_contain_text("Saved and applied live")
    expect(page.get_by_label("max_wait_ms")).to_have_value("5")
    expect(row.get_by_text("Modified")).to_be_visible()
    expect(row.locator(".row-error")).to_have_count(0)
    expect(page.locator("#history-panel")).to_contain_text("max_wait_ms")
    assert sidecar.client.settings()["max_wait_ms"] == 5
    (shown,) = sql_conn.execute("SELECT azure_local_ai.get_setting('max_wait_ms')").fetchone()
    assert float(shown) == 5
    page.screenshot(path=str(screenshots / "settings-2-saved.png"), full_page=True)


def test_sidecar_down_says_what_to_do(page: Page, console: Console, screenshots: Path) -> None:
    """The shared browser console points INFERENCE_URL where nothing listens."""
    page.goto(f"{console.url}/settings/")
    problem = page.locator("#sidecar-problem")
    expect(problem).to_contain_text("Cannot read the inference settings")
    expect(problem).to_contain_text("python -m inference serve")
    expect(page.get_by_role("button", name="Save", exact=True)).to_be_disabled()
    page.get_by_role("link", name="Refresh").click()
    expect(problem).to_be_visible()
    page.screenshot(path=str(screenshots / "settings-4-unreachable.png"))
