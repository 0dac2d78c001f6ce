"""The playground in a real browser: three texts embedded with the session's tiny model show
their vectors and the similarity heat map, and the search demo creates its sample table in
the managed server and answers a query through SQL; with a generated reranker deployed, the
Rerank tab ranks the sample documents in SQL and the demo's hybrid + rerank mode shows its
four stages."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from console.playground import demo, rerank
from serverparams.server import ManagedServer
from tests.console.stack import drop_database, fresh_deployment_state
from tests.e2e.conftest import running_console, signed_in_page
from tests.fixtures.pg import allow_extensions
from tests.fixtures.rerankers import Reranker, deploy_reranker
from tests.fixtures.sidecar import SidecarProcess

pytestmark = pytest.mark.browser

TEXTS = [
    "the small cat sat in the old house",
    "a small dog ran to the house",
    "postgres server with a vector database",
]
# The shipped English document about cats, typed as the query: its own nearest neighbour
# whatever the model (the tiny model of the tests knows too few words for more).
CAT_DOCUMENT = "Cats sleep twelve to sixteen hours a day and are most active at dawn and dusk."
SETUP_TIMEOUT_MS = 120_000
RERANKER = "rerank-tiny:v1"


@pytest.fixture
def playground_url(
    managed_pg: ManagedServer, sidecar: SidecarProcess, tmp_path: Path
) -> Iterator[str]:
    """``manage.py runserver`` on the session's sidecar and managed server, with VECTOR and
    AZURE_LOCAL_AI allowed and no sample table yet; afterwards the allowlist is put back and
    the demo's database dropped."""
    with fresh_deployment_state(managed_pg, sidecar):
        with managed_pg.connect() as conn:
            allow_extensions(conn, "vector", "azure_local_ai")
        drop_database(managed_pg, demo.DATABASE)
        try:
            with running_console(managed_pg, sidecar.url, tmp_path) as console:
                yield console.url
        finally:
            drop_database(managed_pg, demo.DATABASE)


def _scroll_to_top_of(page: Page, selector: str) -> None:
    page.locator(selector).evaluate(
        "element => element.closest('section').scrollIntoView({block: 'start'})"
    )


def test_three_texts_show_the_heat_map_and_the_demo_searches_through_sql(
    browser: Browser, playground_url: str, screenshots: Path
) -> None:
    with signed_in_page(browser, playground_url) as page:
        page.get_by_role("navigation", name="Resource menu").get_by_role(
            "link", name="Playground"
        ).click()
        expect(page.get_by_role("heading", name="Embed texts")).to_be_visible()
        page.get_by_label("Texts, one per line").fill("\n".join(TEXTS))
        page.get_by_role("button", name="Embed", exact=True).click()

        rows = page.locator("table.embeddings tbody tr")
        expect(rows).to_have_count(3)
        for row, text in zip(rows.all(), TEXTS, strict=True):
            expect(row).to_contain_text(text)
            expect(row.get_by_role("img")).to_have_attribute("aria-label", re.compile("32 values"))
        heat_map = page.locator("#similarity")
        expect(heat_map).to_be_visible()
        cells = heat_map.locator("td")
        expect(cells).to_have_count(9)
        for i in range(3):  # each text is itself: 1.00 on the diagonal
            expect(cells.nth(i * 4)).to_have_text("1.00")
        expect(page.locator("#reproduce-sql")).to_contain_text("azure_local_ai.create_embeddings(")
        expect(page.locator("#reproduce-curl")).to_contain_text("/v1/embeddings")
        # Tall enough for the texts typed, their embeddings and the heat map at once.
        page.set_viewport_size({"width": 1280, "height": 1200})
        page.screenshot(path=str(screenshots / "playground-1-results.png"))
        # The SQL is copied to the clipboard as shown.
        page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        copy = page.locator("#reproduce-sql").locator("xpath=preceding-sibling::button[1]")
        copy.click()
        expect(copy).to_have_text("Copied")
        copied = page.evaluate("navigator.clipboard.readText()")
        assert copied == page.locator("#reproduce-sql").text_content()

        demo_section = page.locator("#demo-section")
        expect(demo_section.locator("#demo-table-state")).to_contain_text("Not created")
        demo_section.get_by_role("button", name="Create the sample table").click()
        expect(demo_section.get_by_role("status").first).to_contain_text(
            "Sample table created.", timeout=SETUP_TIMEOUT_MS
        )
        expect(demo_section.locator("#demo-table-state")).to_contain_text(
            f"{len(demo.samples().documents)} documents embedded with tiny:v1"
        )

        demo_section.get_by_label("Query").fill(CAT_DOCUMENT)
        demo_section.get_by_role("button", name="Search", exact=True).click()
        matches = demo_section.locator("table.matches tbody tr")
        expect(matches).to_have_count(demo.DEFAULT_K)
        expect(matches.first).to_contain_text(CAT_DOCUMENT)
        expect(matches.first).to_contain_text("1.000")
        expect(demo_section.locator("#demo-search-time")).to_contain_text(" ms")
        expect(demo_section.locator("#demo-sql")).to_contain_text(
            "ORDER BY d.embedding <=> q.embedding"
        )
        _scroll_to_top_of(page, "#demo-title")
        page.screenshot(path=str(screenshots / "playground-2-search.png"))


@pytest.fixture(scope="module")
def reranker_files(tmp_path_factory: pytest.TempPathFactory) -> Reranker:
    return deploy_reranker(tmp_path_factory.mktemp("reranker"), "bert", RERANKER)


def test_the_rerank_tab_and_hybrid_search_with_a_reranker(
    browser: Browser,
    playground_url: str,
    sidecar: SidecarProcess,
    reranker_files: Reranker,
    screenshots: Path,
) -> None:
    # (Unregistered after the test by playground_url's fresh deployment state.)
    sidecar.client.register(reranker_files.uri, str(reranker_files.stored.path))
    with signed_in_page(browser, playground_url) as page:
        page.goto(f"{playground_url}/playground/")
        # The Embed tab does not offer the reranker.
        expect(page.locator("#embed-section select[name=model] option")).to_have_count(1)
        page.get_by_role("navigation", name="Playground").get_by_role("link", name="Rerank").click()
        expect(page.get_by_role("heading", name="Rank documents")).to_be_visible()
        expect(page).to_have_url(re.compile(r"\?tab=rerank$"))
        expect(page.get_by_label("Reranker")).to_have_value(RERANKER)
        # The sample is there; a typed query replaces its query.
        documents = page.get_by_label("Documents, one per line")
        expect(documents).to_have_value("\n".join(rerank.SAMPLE_DOCUMENTS))
        page.locator("#rerank-query").fill("how to keep bread fresh for days")
        page.get_by_role("button", name="Rank", exact=True).click()

        before = page.locator("#rank-before li")
        after = page.locator("#rank-after li")
        expect(after).to_have_count(len(rerank.SAMPLE_DOCUMENTS))
        expect(before).to_have_count(len(rerank.SAMPLE_DOCUMENTS))
        for row, text in zip(before.all(), rerank.SAMPLE_DOCUMENTS, strict=True):
            expect(row).to_contain_text(text)
        scores = [float(v) for v in after.locator(".score-value").evaluate_all(
            "spans => spans.map(s => s.dataset.score)"
        )]  # fmt: skip
        assert scores == sorted(scores, reverse=True)
        # Each bar is as wide as its score says (on 0..1), and visible.
        bar = after.first.locator(".score-bar")
        fill = bar.locator("span")
        width = fill.evaluate("e => e.getBoundingClientRect().width")
        full = bar.evaluate("e => e.getBoundingClientRect().width - 2")
        assert width == pytest.approx(scores[0] * full, abs=1.5)
        expect(page.locator("#rerank-sql")).to_contain_text("azure_local_ai.rank(")
        expect(page.locator("#rerank-curl")).to_contain_text("/v1/rerank")
        expect(page.locator("#rank-time")).to_contain_text(" ms")
        page.set_viewport_size({"width": 1280, "height": 1100})
        page.get_by_role("heading", name="Rank documents").scroll_into_view_if_needed()
        page.screenshot(path=str(screenshots / "playground-3-rerank.png"))
        page.locator("#ranking-title").evaluate("e => e.scrollIntoView({block: 'start'})")
        page.screenshot(path=str(screenshots / "playground-3a-rerank-orders.png"))

        # Too many documents: the form says so and keeps them.
        page.locator("#rerank-documents").fill("\n".join(f"doc {i}" for i in range(51)))
        page.get_by_role("button", name="Rank", exact=True).click()
        expect(page.locator("#documents-error")).to_contain_text("51 documents: at most 50")
        expect(page.locator("#rerank-documents")).to_have_value(re.compile("doc 50$"))
        page.locator("#rerank-documents").scroll_into_view_if_needed()
        page.screenshot(path=str(screenshots / "playground-3b-rerank-refused.png"))

        # The search demo's hybrid + rerank mode.
        demo_section = page.locator("#demo-section")
        demo_section.get_by_role("button", name="Create the sample table").click()
        expect(demo_section.get_by_role("status").first).to_contain_text(
            "Sample table created.", timeout=SETUP_TIMEOUT_MS
        )
        demo_section.get_by_label("Query").fill(CAT_DOCUMENT)
        demo_section.get_by_label("Hybrid + rerank").check()
        expect(demo_section.get_by_label("Reranker")).to_have_value(RERANKER)
        demo_section.get_by_role("button", name="Search", exact=True).click()
        stages = demo_section.locator("#hybrid-stages > section")
        expect(stages).to_have_count(4)
        for key in ("fulltext", "vector", "fused", "reranked"):
            expect(demo_section.locator(f"#stage-{key} .stage-time")).to_contain_text(" ms")
        expect(demo_section.locator("#stage-fulltext li").first).to_contain_text(CAT_DOCUMENT)
        expect(demo_section.locator("#stage-reranked li")).to_have_count(demo.RERANK_TOP)
        expect(demo_section.locator("#stage-fused li")).to_have_count(demo.RERANK_TOP)
        demo_section.locator("#stage-fused-details summary").click()
        expect(demo_section.locator("#stage-fused-sql")).to_contain_text("sum(1.0 / (60 + rank))")
        page.set_viewport_size({"width": 1280, "height": 1300})
        page.locator("#demo-search-title").evaluate("e => e.scrollIntoView({block: 'start'})")
        page.screenshot(path=str(screenshots / "playground-4-hybrid.png"))
        page.locator("#hybrid-sql-title").evaluate("e => e.scrollIntoView({block: 'start'})")
        page.screenshot(path=str(screenshots / "playground-4b-hybrid-sql.png"))
