"""The top bar's search in Chromium: "/" to focus, results as you type, arrows and Enter."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import Console

pytestmark = pytest.mark.browser


def test_slash_focuses_the_search_and_the_keyboard_opens_a_parameter(
    page: Page, console: Console, screenshots: Path
) -> None:
    page.goto(f"{console.url}/")
    box = page.locator("#global-search")
    page.keyboard.press("/")
    expect(box).to_be_focused()
    page.keyboard.type("shared_buf")
    results = page.locator("#search-results")
    expect(results).to_be_visible()
    expect(box).to_have_attribute("aria-expanded", "true")
    hits = results.get_by_role("option")
    expect(hits.first).to_contain_text("shared_buffers")
    page.screenshot(path=str(screenshots / "search-1-results.png"))

    page.keyboard.press("ArrowDown")
    expect(hits.first).to_have_class(re.compile(r"\bactive\b"))
    expect(box).to_have_attribute("aria-activedescendant", hits.first.get_attribute("id") or "")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/parameters/\?q=shared_buffers$"))
    expect(page.locator('tr.param-row[data-param="shared_buffers"]')).to_be_visible()


def test_pages_and_models_are_found_and_escape_closes_the_list(
    page: Page, console: Console
) -> None:
    box = page.locator("#global-search")
    box.click()
    page.keyboard.type("models")
    results = page.locator("#search-results")
    expect(results.get_by_role("option", name=re.compile("^Models"))).to_be_visible()
    page.keyboard.press("Escape")
    expect(results).to_be_hidden()
    box.fill("")
    page.keyboard.type("minilm")
    model = results.get_by_role("option", name=re.compile("all-MiniLM-L6-v2:v1"))
    expect(model).to_be_visible()
    model.click()
    page.wait_for_url(f"{console.url}/models/all-MiniLM-L6-v2:v1/")
