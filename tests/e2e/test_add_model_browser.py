"""Bring your own model in a real browser: a generated sentence-transformers folder is added
from the Models page, deployed by the Celery worker through its export and parity gate, shown
with its parity on its page, embedded with in the playground and removed again; a cross-encoder
is added the same way and deployed as a reranker, listed as one with its rerank parity and
offered as the default reranker on the Settings page; a generative model is refused with the
reason shown and nothing to add."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from inference.store import ModelStore
from tests.e2e.deploystack import (
    DeployConsole,
    deploy_console,  # noqa: F401  (the fixture)
    deploy_page,  # noqa: F401  (the fixture)
)
from tests.fixtures.stmodels import make_cross_encoder, make_generative, make_st_model, sharpen

pytestmark = pytest.mark.browser

URI = "my-bert:v1"
RERANKER = "my-reranker:v1"
# Download, ONNX export with PyTorch and the parity gate, on a machine of two cores.
DEPLOY_TIMEOUT_MS = 180_000
TERMINAL = """() => {
  const state = document.getElementById("deployment-state");
  return state !== null && ["succeeded", "failed", "cancelled"].includes(state.dataset.state);
}"""
TEXTS = ["how do I store vectors in PostgreSQL?", "Der schnelle braune Fuchs."]


def _fact(page: Page, label: str) -> str:
    """The value the "What was found" list gives for ``label``."""
    facts = page.locator("dl#facts")
    term = facts.locator("dt", has_text=re.compile(f"^{re.escape(label)}$"))
    expect(term).to_have_count(1)
    return term.locator("xpath=following-sibling::dd[1]").inner_text()


def _open_add_page(page: Page, url: str) -> None:
    page.get_by_role("navigation", name="Resource menu").get_by_role("link", name="Models").click()
    page.wait_for_url(f"{url}/models/")
    page.locator("#add-model").click()
    page.wait_for_url(f"{url}/models/add/")
    expect(page.get_by_role("heading", name="Add a model", level=1)).to_be_visible()


def _inspect(page: Page, folder: Path) -> None:
    page.get_by_label("Hugging Face repository or folder").fill(str(folder))
    page.get_by_role("button", name="Inspect").click()
    expect(page.locator("#inspection")).to_be_visible()


def test_a_folder_added_on_the_models_page_deploys_serves_in_the_playground_and_is_removed(
    deploy_page: Page,  # noqa: F811
    deploy_console: DeployConsole,  # noqa: F811
    screenshots: Path,
    tmp_path: Path,
) -> None:
    page, console = deploy_page, deploy_console
    folder = make_st_model(
        tmp_path / "bert-dense16", "bert", dense_out=16, prompts={"query": "query: "}
    )
    # Should the test stop half-way, the deploy stack's teardown clears the added models'
    # catalog, the model store and the sidecar's registrations.
    _open_add_page(page, console.url)
    _inspect(page, folder)
    expect(page.locator("#found-title")).to_contain_text("Can be served")
    expect(page.locator("#refusals")).to_have_count(0)
    assert _fact(page, "Source") == str(folder)
    assert _fact(page, "Architecture").startswith("bert")
    assert _fact(page, "Output dimensions") == "16"
    assert _fact(page, "Pooling") == "mean"
    assert _fact(page, "Dense layers") == "32 → 16 (tanh)"
    assert _fact(page, "Prompts") == 'query: "query: "'
    assert "M" in _fact(page, "Parameters")
    assert _fact(page, "Memory needed").endswith(" MB to serve")
    page.screenshot(path=str(screenshots / "add-model-1-inspected.png"), full_page=True)

    uri = page.locator("#uri")
    expect(uri).to_have_value(f"{folder.name}:v1")
    expect(page.locator("#precision")).to_have_value("fp32")
    uri.fill(URI)
    page.get_by_role("button", name="Add and deploy").click()
    page.wait_for_url(re.compile(rf"^{re.escape(console.url)}/deployments/\d+/$"))
    expect(page.get_by_role("heading", level=1)).to_contain_text(URI)
    page.wait_for_function(TERMINAL, timeout=DEPLOY_TIMEOUT_MS)
    state = page.locator("#deployment-state")
    assert state.get_attribute("data-state") == "succeeded", (
        page.locator("#deployment-body").inner_text() + "\n" + console.logs()
    )
    expect(state).to_have_text("Ready")
    page.screenshot(path=str(screenshots / "add-model-2-deployed.png"), full_page=True)

    # Its page: deployed, the parity gate passed, where it was added from.
    page.get_by_role("toolbar", name="Commands").get_by_role("link", name="Model").click()
    page.wait_for_url(f"{console.url}/models/{URI}/")
    about = page.get_by_role("region", name="About")
    expect(about.get_by_text("Deployed", exact=True)).to_be_visible()
    expect(page.locator("#added-by")).to_contain_text(str(folder))
    parity = page.locator("#parity")
    expect(parity).to_be_visible()
    expect(parity.get_by_role("heading")).to_contain_text("Passed")
    expect(parity).to_contain_text("Lowest cosine")
    expect(page.locator("#remove-model")).to_be_visible()
    page.screenshot(path=str(screenshots / "add-model-3-model-page.png"), full_page=True)

    # The playground embeds with it, its query prompt applied.
    page.get_by_role("navigation", name="Resource menu").get_by_role(
        "link", name="Playground"
    ).click()
    page.wait_for_url(f"{console.url}/playground/")
    model = page.locator("#embed-section").get_by_label("Model", exact=True)
    expect(model.locator(f'option[value="{URI}"]')).to_have_count(1)
    model.select_option(URI)
    page.get_by_label("Input type").select_option("query")
    page.get_by_label("Texts, one per line").fill("\n".join(TEXTS))
    page.get_by_role("button", name="Embed", exact=True).click()
    rows = page.locator("table.embeddings tbody tr")
    expect(rows).to_have_count(len(TEXTS))
    expect(page.locator("#results-title")).to_be_visible()
    expect(page.locator("#embed-section")).to_contain_text(f"embedded with {URI}")
    expect(page.locator("#embed-section")).to_contain_text('prefix "query: "')
    for row in rows.all():
        expect(row.locator("td.num").first).to_have_text("16")
        expect(row.get_by_role("img")).to_have_attribute("aria-label", re.compile("16 values"))
    expect(page.locator("#similarity td")).to_have_count(4)
    page.set_viewport_size({"width": 1280, "height": 1200})
    page.screenshot(path=str(screenshots / "add-model-4-playground.png"))
    page.set_viewport_size({"width": 1280, "height": 900})

    # The Models page lists it, marked as added, with its parity and its source.
    page.get_by_role("navigation", name="Resource menu").get_by_role("link", name="Models").click()
    page.wait_for_url(f"{console.url}/models/")
    listed = page.locator(f'tr[data-model="{URI}"]')
    expect(listed).to_contain_text("added")
    expect(listed).to_contain_text("Deployed")
    expect(listed).to_contain_text("min cos 1.0000")
    expect(listed).to_contain_text(f"folder {folder.name}")
    page.screenshot(path=str(screenshots / "add-model-5-models-list.png"), full_page=True)

    # Removed from its page: unloaded, its files and its catalog entry gone.
    listed.get_by_role("link", name="my-bert").click()
    page.wait_for_url(f"{console.url}/models/{URI}/")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#remove-model").click()
    page.wait_for_url(f"{console.url}/models/")
    expect(page.get_by_role("status").filter(has_text="was removed")).to_contain_text(
        f"{URI} was removed"
    )
    expect(page.locator(f'tr[data-model="{URI}"]')).to_have_count(0)
    page.screenshot(path=str(screenshots / "add-model-6-removed.png"), full_page=True)
    assert ModelStore(console.models_dir).get(URI) is None
    assert URI not in {m["model_uri"] for m in console.sidecar.client.models()}


def test_a_cross_encoder_is_added_and_deployed_as_a_reranker(
    deploy_page: Page,  # noqa: F811
    deploy_console: DeployConsole,  # noqa: F811
    screenshots: Path,
    tmp_path: Path,
) -> None:
    page, console = deploy_page, deploy_console
    folder = make_cross_encoder(tmp_path / "bert-cross-encoder")
    sharpen(folder)
    _open_add_page(page, console.url)
    _inspect(page, folder)
    found = page.locator("#found-title")
    expect(found).to_contain_text("Can be served")
    expect(found).to_contain_text("Reranker")
    expect(page.locator("#refusals")).to_have_count(0)
    # Its kind first, then its own facts: max tokens per pair and the score, no pooling.
    expect(page.locator("dl#facts dt").first).to_have_text("Kind")
    assert _fact(page, "Kind").startswith("reranker (cross-encoder")
    assert "ForSequenceClassification" in _fact(page, "Architecture")
    assert "query and document together" in _fact(page, "Max tokens")
    assert "sigmoid" in _fact(page, "Score")
    expect(page.locator("dl#facts dt", has_text="Pooling")).to_have_count(0)
    # int8 is offered, with its own gate on rankings; fp32 is the default.
    expect(page.locator("#precision option")).to_have_count(2)
    expect(page.locator("#precision")).to_have_value("fp32")
    page.screenshot(path=str(screenshots / "add-reranker-1-inspected.png"), full_page=True)

    page.locator("#uri").fill(RERANKER)
    page.get_by_role("button", name="Add and deploy").click()
    page.wait_for_url(re.compile(rf"^{re.escape(console.url)}/deployments/\d+/$"))
    page.wait_for_function(TERMINAL, timeout=DEPLOY_TIMEOUT_MS)
    state = page.locator("#deployment-state")
    assert state.get_attribute("data-state") == "succeeded", (
        page.locator("#deployment-body").inner_text() + "\n" + console.logs()
    )
    expect(page.locator("#deployment-body")).to_contain_text("azure_local_ai.rank(")
    page.screenshot(path=str(screenshots / "add-reranker-2-deployed.png"), full_page=True)

    # The Models page lists it as a reranker: no dimensions, max tokens per pair, its parity.
    page.get_by_role("navigation", name="Resource menu").get_by_role("link", name="Models").click()
    page.wait_for_url(f"{console.url}/models/")
    listed = page.locator(f'tr[data-model="{RERANKER}"]')
    expect(listed.locator(".kind-badge")).to_have_text("Reranker")
    expect(listed).to_contain_text("Deployed")
    expect(listed).to_contain_text("scores pairs")
    expect(listed).to_contain_text("per pair")
    expect(listed).to_contain_text("max diff")
    expect(page.locator('tr[data-model="all-MiniLM-L6-v2:v1"] .kind-badge')).to_have_text(
        "Embedding"
    )
    page.screenshot(path=str(screenshots / "add-reranker-3-models-list.png"), full_page=True)

    # Its page: the kind, the pair facts and the rerank parity gate's figures.
    listed.get_by_role("link", name="my-reranker").click()
    page.wait_for_url(f"{console.url}/models/{RERANKER}/")
    expect(page.locator("#model-kind")).to_contain_text("Reranker")
    about = page.get_by_role("region", name="About")
    expect(about.locator("dt", has_text="Dimensions")).to_have_count(0)
    expect(about.locator("dt", has_text="Score")).to_have_count(1)
    parity = page.locator("#parity")
    expect(parity.get_by_role("heading")).to_contain_text("Passed")
    expect(parity).to_contain_text("Largest score difference")
    expect(parity).to_contain_text("Same order")
    expect(page.locator("#precision option")).to_have_count(2)  # int8 with its rankings gate
    page.screenshot(path=str(screenshots / "add-reranker-4-model-page.png"), full_page=True)

    # The settings page offers it as the default reranker.
    menu = page.get_by_role("navigation", name="Resource menu")
    menu.get_by_role("link", name="Settings", exact=True).click()
    page.wait_for_url(f"{console.url}/settings/")
    choice = page.locator("#id_default_rerank_model")
    expect(choice.locator(f'option[value="{RERANKER}"]')).to_have_count(1)
    choice.scroll_into_view_if_needed()
    page.screenshot(path=str(screenshots / "add-reranker-5-settings.png"), full_page=True)


def test_a_generative_model_is_refused_with_the_reason_and_nothing_to_add(
    deploy_page: Page,  # noqa: F811
    deploy_console: DeployConsole,  # noqa: F811
    screenshots: Path,
    tmp_path: Path,
) -> None:
    page, console = deploy_page, deploy_console
    folder = make_generative(tmp_path / "causal-lm")
    _open_add_page(page, console.url)
    _inspect(page, folder)
    expect(page.locator("#found-title")).to_contain_text("Refused")
    refusals = page.locator("#refusals")
    expect(refusals).to_be_visible()
    expect(refusals).to_contain_text("This model cannot be added")
    expect(refusals).to_contain_text("generative language model")
    expect(refusals).to_contain_text("Add an embedding model")
    assert "ForCausalLM" in _fact(page, "Architecture")
    expect(page.get_by_role("button", name="Add and deploy")).to_have_count(0)
    expect(page.locator("#uri")).to_have_count(0)
    # The source stays in its field, to be corrected.
    expect(page.locator("#source")).to_have_value(str(folder))
    page.screenshot(path=str(screenshots / "add-model-7-refused.png"), full_page=True)
    added = console.server.var_dir / "catalog" / "added.json"
    assert not added.exists() or "causal-lm" not in added.read_text()
