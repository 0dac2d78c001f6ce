"""The product's main flow in a real browser: ticking AZURE_LOCAL_AI in Server parameters
deploys the model from the Hub, and the bell, the deployment page and the model page follow
it to the end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, Request, expect

from inference.store import ModelStore
from tests.console.servers import show
from tests.console.stack import E5_FROM_FAKE_HUB, E5_URI
from tests.e2e.deploystack import (
    DeployConsole,
    deploy_console,  # noqa: F401  (the fixture)
    deploy_page,  # noqa: F401  (the fixture)
)
from tests.e2e.test_parameters_browser import row, search

pytestmark = pytest.mark.browser

LICENSE_URL = E5_FROM_FAKE_HUB["license"]["url"]
DEPLOY_TIMEOUT_MS = 90_000
# The fetch step under way, its progress bar shown. (huggingface_hub reports a download in
# 10 MB pieces, so the generated model's files arrive whole and the bar moves file by file.)
FETCHING = """() => {
  const step = document.querySelector('li.step[data-step="fetch"]');
  return step !== null && step.classList.contains("step-running")
    && step.querySelector('[role="progressbar"]') !== null;
}"""
TERMINAL = """() => {
  const state = document.getElementById("deployment-state");
  return state !== null && ["succeeded", "failed", "cancelled"].includes(state.dataset.state);
}"""


def test_enabling_azure_local_ai_deploys_the_model_and_the_pages_follow_it(
    deploy_page: Page,  # noqa: F811
    deploy_console: DeployConsole,  # noqa: F811
    screenshots: Path,
) -> None:
    page, console = deploy_page, deploy_console
    search(page, "extensions")
    row(page, "azure.extensions").get_by_label("AZURE_LOCAL_AI").check()
    expect(page.locator("#unsaved-count")).to_have_text("1 unsaved change")
    page.locator("#cmd-save").click()

    # Nothing is applied or started before the confirmation, which names the model, its
    # license, its memory need and the third-party notice.
    dialog = page.locator("#dialog-host").get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("heading", name="Enable AZURE_LOCAL_AI")).to_be_visible()
    expect(dialog.get_by_label("Model", exact=True)).to_have_value(E5_URI)
    chosen = dialog.locator("tr.is-default")
    expect(chosen).to_contain_text(E5_URI)
    expect(chosen).to_contain_text("default")
    expect(chosen.get_by_role("link", name="MIT")).to_have_attribute("href", LICENSE_URL)
    expect(chosen).to_contain_text(f"{E5_FROM_FAKE_HUB['memory_mb']} MB")
    expect(dialog).to_contain_text("These are third-party open-source models")
    assert "azure_local_ai" not in show(console.server, "azure.extensions").split(",")
    page.screenshot(path=str(screenshots / "deploy-1-confirm.png"))

    dialog.get_by_role("button", name="Save and deploy").click()
    expect(dialog).to_be_hidden()
    messages = page.locator("#blade-messages")
    expect(messages).to_contain_text(f"Deploying {E5_URI}")
    follow = messages.get_by_role("link", name="Follow the deployment")
    expect(follow).to_have_attribute("href", re.compile(r"^/deployments/\d+/$"))
    detail_path = follow.get_attribute("href")
    page.screenshot(path=str(screenshots / "deploy-2-saved.png"))

    # The bell, refreshed by the Save's answer without a reload, lists the running
    # deployment and leads to it.
    bell = page.locator("details.notifications")
    expect(bell.locator("summary")).to_have_attribute("aria-label", re.compile(r", 1 running$"))
    bell.locator("summary").click()
    panel = bell.get_by_role("region", name="Notifications")
    expect(panel).to_be_visible()
    note = panel.locator(".note-running")
    expect(note).to_contain_text(f"Deploying {E5_URI}")
    expect(note).to_contain_text("running")
    page.screenshot(path=str(screenshots / "deploy-3-bell.png"))
    note.get_by_role("link").click()
    page.wait_for_url(f"{console.url}{detail_path}")

    # From here on the page is updated by htmx alone: a reload would drop this mark.
    page.evaluate("window.notReloaded = true")
    polls: list[str] = []

    def count_poll(request: Request) -> None:
        if request.url.endswith(str(detail_path)):
            polls.append(request.url)

    page.on("request", count_poll)
    page.wait_for_function(FETCHING, timeout=DEPLOY_TIMEOUT_MS)
    fetch = page.locator('li.step[data-step="fetch"]')
    expect(fetch.locator(".progress-text")).to_contain_text(re.compile(r"\d+% — .+ of .+"))
    assert page.locator("#deployment-state").get_attribute("data-state") == "running"
    page.screenshot(path=str(screenshots / "deploy-4-progress.png"))

    page.wait_for_function(TERMINAL, timeout=DEPLOY_TIMEOUT_MS)
    state = page.locator("#deployment-state")
    assert state.get_attribute("data-state") == "succeeded", (
        page.locator("#deployment-body").inner_text() + "\n" + console.logs()
    )
    expect(state).to_have_text("Ready")
    assert page.evaluate("window.notReloaded") is True
    assert polls, "the deployment page never polled"
    for step in page.locator("li.step").all():
        expect(step).to_have_class(re.compile(r"\bstep-(succeeded|skipped)\b"))
    expect(page.locator("#deployment-body")).to_contain_text(
        f"SELECT azure_local_ai.create_embeddings('{E5_URI}', 'some text')"
    )
    page.screenshot(path=str(screenshots / "deploy-5-ready.png"), full_page=True)
    # The terminal answer carries no polling trigger, and nothing polls any more; the bell
    # stops polling too once it has seen the deployment finish.
    expect(page.locator('#deployment-body [hx-trigger*="every"]')).to_have_count(0)
    expect(page.locator('[hx-trigger*="every"]')).to_have_count(0, timeout=10_000)
    expect(bell.locator("summary")).not_to_have_attribute("aria-label", re.compile("running"))
    polled = len(polls)
    page.wait_for_timeout(1_500)
    assert len(polls) == polled, f"still polling after Ready: {polls[polled:]}"
    assert "azure_local_ai" in show(console.server, "azure.extensions").split(",")

    # The model's page: deployed, each file with its sha256, the license.
    page.get_by_role("toolbar", name="Commands").get_by_role("link", name="Model").click()
    page.wait_for_url(f"{console.url}/models/{E5_URI}/")
    about = page.get_by_role("region", name="About")
    expect(about.get_by_text("Deployed", exact=True)).to_be_visible()
    expect(page.locator("#license-link")).to_have_attribute("href", LICENSE_URL)
    expect(about.get_by_role("link", name="MIT")).to_have_attribute("href", LICENSE_URL)
    stored = ModelStore(console.models_dir).get(E5_URI)
    assert stored is not None
    files = page.get_by_role("region", name="Model files")
    for rel, digest in stored.manifest["files"].items():
        name = page.locator("td:first-child code", has_text=re.compile(f"^{re.escape(rel)}$"))
        expect(files.locator("tr", has=name)).to_contain_text(digest)
    page.screenshot(path=str(screenshots / "deploy-6-model.png"), full_page=True)
