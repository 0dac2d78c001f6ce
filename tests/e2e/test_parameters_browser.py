"""The Server parameters blade in a real browser against a real managed server."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.console.servers import show
from tests.e2e.conftest import Console

pytestmark = pytest.mark.browser


def search(page: Page, text: str) -> None:
    box = page.get_by_placeholder("Search to filter items...")
    box.fill(text)
    # The search is debounced and server-side: wait for the rows to be re-rendered.
    expect(page.locator("#param-search")).to_have_value(text)
    page.wait_for_url(f"**q={text.replace(' ', '+')}**")


def row(page: Page, name: str):  # type: ignore[no-untyped-def]
    return page.locator(f'tr.param-row[data-param="{name}"]')


def test_tick_vector_and_save_changes_the_allowlist(
    page: Page, console: Console, screenshots: Path
) -> None:
    page.screenshot(path=str(screenshots / "parameters-1280.png"), full_page=False)
    search(page, "extensions")
    allowlist = row(page, "azure.extensions")
    expect(allowlist).to_be_visible()
    assert page.locator("tr.param-row").count() < 5
    allowlist.get_by_label("VECTOR").check()
    expect(page.locator("#unsaved-count")).to_have_text("1 unsaved change")
    expect(allowlist).to_have_class("param-row is-pending")
    page.screenshot(path=str(screenshots / "parameters-pending.png"))
    page.locator("#cmd-save").click()
    expect(page.locator("#blade-messages")).to_contain_text("Saved 1 parameter")
    expect(page.locator("#unsaved-count")).to_have_text("0 unsaved changes")
    assert show(console.server, "azure.extensions") == "vector"
    expect(page.locator("#history-panel")).to_contain_text("azure.extensions")
    expect(row(page, "azure.extensions").get_by_label("VECTOR")).to_be_checked()
    page.screenshot(path=str(screenshots / "parameters-saved.png"), full_page=True)


def test_out_of_range_value_shows_the_error_in_the_row(
    page: Page, console: Console, screenshots: Path
) -> None:
    search(page, "work_mem")
    editor = row(page, "work_mem").locator(".param-editor")
    editor.fill("1")
    page.locator("#cmd-save").click()
    error = row(page, "work_mem").locator(".row-error")
    expect(error).to_contain_text("must be between 64 and 2147483647 kB; got 1")
    # The edit is still pending, so it can be corrected.
    expect(row(page, "work_mem").locator(".param-editor")).to_have_value("1")
    expect(page.locator("#unsaved-count")).to_have_text("1 unsaved change")
    assert show(console.server, "work_mem") == "4MB"
    page.screenshot(path=str(screenshots / "parameters-error.png"))


def test_static_parameter_opens_the_restart_dialog(
    page: Page, console: Console, screenshots: Path
) -> None:
    before = show(console.server, "max_connections")
    search(page, "max_connections")
    row(page, "max_connections").locator(".param-editor").fill(str(int(before) + 20))
    page.locator("#cmd-save").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    for name in ("Save and restart", "Save only", "Cancel"):
        expect(dialog.get_by_role("button", name=name)).to_be_visible()
    page.screenshot(path=str(screenshots / "parameters-restart-dialog.png"))
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    # Cancelled: nothing applied, the edit still pending.
    expect(page.locator("#unsaved-count")).to_have_text("1 unsaved change")
    page.locator("#cmd-save").click()
    page.get_by_role("dialog").get_by_role("button", name="Save only").click()
    expect(page.locator("#param-results")).to_contain_text("Restart pending")
    with console.server.connect() as conn:
        pending = conn.execute(
            "SELECT pending_restart FROM pg_settings WHERE name = 'max_connections'"
        ).fetchone()
    assert pending == (True,)
    assert show(console.server, "max_connections") == before


def test_discard_restores_the_values_read_from_the_server(page: Page) -> None:
    search(page, "enable_seqscan")
    editor = row(page, "enable_seqscan").locator("select.param-editor")
    editor.select_option("off")
    expect(page.locator("#unsaved-count")).to_have_text("1 unsaved change")
    page.locator("#cmd-discard").click()
    expect(editor).to_have_value("on")
    expect(page.locator("#unsaved-count")).to_have_text("0 unsaved changes")
    expect(page.locator("#cmd-save")).to_be_disabled()


def test_pending_edits_survive_searching(page: Page, console: Console) -> None:
    search(page, "enable_seqscan")
    row(page, "enable_seqscan").locator("select.param-editor").select_option("off")
    search(page, "work_mem")
    search(page, "enable_seqscan")
    expect(row(page, "enable_seqscan").locator("select.param-editor")).to_have_value("off")
    page.locator("#cmd-save").click()
    expect(page.locator("#blade-messages")).to_contain_text("Saved 1 parameter")
    assert show(console.server, "enable_seqscan") == "off"


def test_blade_and_overview_fit_a_narrow_window(
    page: Page, console: Console, screenshots: Path
) -> None:
    page.set_viewport_size({"width": 800, "height": 900})
    page.goto(f"{console.url}/parameters/?tab=modified")
    expect(page.get_by_role("link", name="Modified")).to_have_attribute("aria-current", "page")
    page.screenshot(path=str(screenshots / "parameters-800.png"))
    # The page itself does not scroll sideways; the table does, inside its own frame, and the
    # keyboard reaches that frame and scrolls it to the last column.
    assert page.evaluate("document.documentElement.scrollWidth") <= 800
    table = page.get_by_role("region", name="Server parameters table")
    assert table.evaluate("frame => frame.scrollWidth > frame.clientWidth")
    table.focus()
    expect(table).to_be_focused()
    for _ in range(40):
        page.keyboard.press("ArrowRight")
    page.wait_for_function(
        "frame => frame.scrollLeft + frame.clientWidth >= frame.scrollWidth - 1",
        arg=table.element_handle(),
    )
    last_header = table.locator("thead th").last
    box = last_header.bounding_box()
    assert box is not None and box["x"] + box["width"] <= 800
    page.screenshot(path=str(screenshots / "parameters-800-scrolled.png"))
    page.goto(f"{console.url}/")
    expect(page.get_by_role("heading", name="Managed server")).to_be_visible()
    page.screenshot(path=str(screenshots / "overview-800.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.screenshot(path=str(screenshots / "overview-1280.png"), full_page=True)
    # Keyboard: the skip link is the first stop and leads to the blade.
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to main content")).to_be_focused()


def test_reset_to_default_per_row_and_reset_all_dialog(
    page: Page, console: Console, screenshots: Path
) -> None:
    with console.server.connect() as conn:
        conn.execute("ALTER SYSTEM SET work_mem = '8MB'")
        conn.execute("SELECT pg_reload_conf()")
    page.goto(f"{console.url}/parameters/?tab=modified")
    reset_all = page.locator("#cmd-reset-all")
    expect(reset_all).to_be_visible()
    reset_all.click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Reset all to default?")
    expect(dialog).to_contain_text("work_mem")
    page.screenshot(path=str(screenshots / "parameters-reset-all-dialog.png"))
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert show(console.server, "work_mem") == "8MB"
    search(page, "work_mem")
    row(page, "work_mem").get_by_role("button", name="Reset work_mem to default (4096)").click()
    expect(row(page, "work_mem").locator(".param-editor")).to_have_value("4096")
    page.locator("#cmd-save").click()
    expect(page.locator("#blade-messages")).to_contain_text("Saved 1 parameter")
    assert show(console.server, "work_mem") == "4MB"


def test_expired_session_goes_to_sign_in(page: Page, console: Console) -> None:
    page.context.clear_cookies()
    search_box = page.get_by_placeholder("Search to filter items...")
    search_box.fill("work_mem")
    page.wait_for_url("**/accounts/login/**")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
