"""The playground and its semantic search demo against the session's real sidecar (the tiny
model, ``tiny:v1``, and a generated reranker) and managed server: what the page shows equals
what ``/v1/embeddings``, ``CrossEncoder.predict`` and SQL give for the same inputs, the SQL
and curl shown reproduce it, and every refusal says why."""

from __future__ import annotations

import html
import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest
from django.test import Client
from django.urls import reverse

from console.playground import demo, rerank
from console.playground.embedding import MAX_CHARS, MAX_TEXTS, cosine_matrix
from console.playground.reproduce import curl_command, sql_literal
from inference.client import ModelFacts
from serverparams.server import ManagedServer
from tests.console.stack import drop_database, fresh_deployment_state, scratch_database
from tests.fixtures.pg import allow_extensions
from tests.fixtures.rerankers import Reranker, deploy_reranker, reference_scores
from tests.fixtures.sidecar import SidecarProcess, make_store_dir, start_sidecar
from tests.fixtures.tinymodel import MAX_SEQ_LENGTH

TINY = "tiny:v1"
PREFIXED = "tiny-prefixed:v1"  # the tiny model with e5's "query: " / "passage: " prefixes
# Texts that are hard to quote: SQL and shell metacharacters, a backslash, non-Latin script.
AWKWARD = [
    "the cat's house is red",
    "it's a \\ backslash and a $HOME and `ls` and $(rm -rf nothing)",
    "'); DROP TABLE playground_documents; --",
    'a "quoted" word and $$dollar$$ quotes',
    "Der Hund läuft über die Straße — 東京のデータベース",
]
SCRATCH_DB = "playground_tests"
RERANKER = "rerank-tiny:v1"


@pytest.fixture
def console(
    managed_pg: ManagedServer,
    sidecar: SidecarProcess,
    settings: object,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[ManagedServer]:
    """The console pointed at the session's sidecar and managed server; the allowlist and
    the sidecar's registrations are put back afterwards."""
    monkeypatch.setenv("VAR_DIR", str(managed_pg.var_dir))
    monkeypatch.setenv("MANAGED_PG_PORT", str(managed_pg.port))
    monkeypatch.delenv("MANAGED_DATABASE_URL", raising=False)
    settings.INFERENCE_URL = sidecar.url  # type: ignore[attr-defined]
    settings.INFERENCE_TOKEN = ""  # type: ignore[attr-defined]
    with fresh_deployment_state(managed_pg, sidecar):
        yield managed_pg


@pytest.fixture
def allowed(console: ManagedServer) -> ManagedServer:
    """The console, with VECTOR and AZURE_LOCAL_AI allowed."""
    with console.connect() as conn:
        allow_extensions(conn, "vector", "azure_local_ai")
    return console


@pytest.fixture
def scratch(allowed: ManagedServer) -> Iterator[psycopg.Connection]:
    """A database with both extensions, as the page's SQL asks for."""
    scratch_database(allowed, SCRATCH_DB)
    try:
        with allowed.connect(SCRATCH_DB) as conn:
            conn.execute("CREATE EXTENSION vector")
            conn.execute("CREATE EXTENSION azure_local_ai")
            yield conn
    finally:
        drop_database(allowed, SCRATCH_DB)


@pytest.fixture
def no_demo_database(console: ManagedServer) -> Iterator[None]:
    drop_database(console, demo.DATABASE)
    yield
    drop_database(console, demo.DATABASE)


@pytest.fixture
def prefixed_model(
    console: ManagedServer, sidecar: SidecarProcess, tiny_model_dir: Path, tmp_path: Path
) -> str:
    """The tiny model registered again with query and passage prefixes (unregistered by
    ``console`` afterwards)."""
    store_dir = make_store_dir(tiny_model_dir, tmp_path / "prefixed", uri=PREFIXED)
    sidecar.client.register(PREFIXED, str(store_dir))
    return PREFIXED


@pytest.fixture(scope="module")
def reranker_files(tmp_path_factory: pytest.TempPathFactory) -> Reranker:
    """A random-weight cross-encoder, exported and gated into a store (made once)."""
    return deploy_reranker(tmp_path_factory.mktemp("reranker"), "bert", RERANKER)


@pytest.fixture
def reranker(console: ManagedServer, sidecar: SidecarProcess, reranker_files: Reranker) -> Reranker:
    """The reranker registered and loaded in the sidecar (unregistered by ``console``)."""
    sidecar.client.register(reranker_files.uri, str(reranker_files.stored.path))
    return reranker_files


def _embed(
    client: Client, texts: list[str], model: str = TINY, input_type: str = "none", **headers: str
):  # type: ignore[no-untyped-def]
    return client.post(
        reverse("playground:embed"),
        {"model": model, "input_type": input_type, "texts": "\n".join(texts)},
        **headers,
    )


def _sidecar_vectors(
    url: str, model: str, texts: list[str], input_type: str = "none"
) -> np.ndarray:
    """``/v1/embeddings`` for all texts in one request, as floats."""
    body: dict[str, object] = {"model": model, "input": texts}
    if input_type != "none":
        body["input_type"] = input_type
    answer = httpx.post(f"{url}/v1/embeddings", json=body, timeout=30).raise_for_status().json()
    rows = sorted(answer["data"], key=lambda item: item["index"])
    return np.array([row["embedding"] for row in rows], dtype=np.float64)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _shown_vectors(response) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.stack([t.vector for t in response.context["embedding"].texts]).astype(np.float64)


def _text(response) -> str:  # type: ignore[no-untyped-def]
    """The page's text as a reader sees it, tags dropped and entities decoded."""
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.content.decode())))


# -- the playground ---------------------------------------------------------------------------


def test_results_equal_the_sidecars_embeddings_for_the_same_inputs(
    console: ManagedServer, sidecar: SidecarProcess, admin_client: Client
) -> None:
    response = _embed(admin_client, AWKWARD)
    assert response.status_code == 200, _text(response)[:2000]
    shown = response.context["embedding"]
    expected = _sidecar_vectors(sidecar.url, TINY, AWKWARD)
    assert [t.text for t in shown.texts] == AWKWARD
    np.testing.assert_allclose(_cosines(_shown_vectors(response), expected), 1.0, atol=1e-6)
    for text, vector in zip(shown.texts, expected, strict=True):
        assert text.dimensions == 32
        assert text.norm == pytest.approx(float(np.linalg.norm(vector)), abs=1e-5)
        # Its token count is what the sidecar counts for that text alone.
        _, usage = sidecar.client.embed(TINY, [text.text])
        assert text.tokens == usage["prompt_tokens"]
        assert text.latency_ms > 0
        assert text.sidecar_ms is not None and 0 < text.sidecar_ms < text.latency_ms
        assert len(text.picture) == 32
    page = response.content.decode()
    assert page.count('class="vector-picture"') == len(AWKWARD)
    for text in AWKWARD:  # escaped in the page, never pasted raw
        assert html.escape(text) in page


def test_query_and_passage_apply_the_models_prefixes(
    console: ManagedServer, sidecar: SidecarProcess, prefixed_model: str, admin_client: Client
) -> None:
    texts = ["a red car in the city", "the river and the mountain"]
    plain = _sidecar_vectors(sidecar.url, prefixed_model, texts)
    for input_type in ("query", "passage"):
        response = _embed(admin_client, texts, model=prefixed_model, input_type=input_type)
        assert response.status_code == 200
        expected = _sidecar_vectors(sidecar.url, prefixed_model, texts, input_type)
        shown = _shown_vectors(response)
        np.testing.assert_allclose(_cosines(shown, expected), 1.0, atol=1e-6)
        assert np.all(_cosines(shown, plain) < 0.9999), "the prefix changed nothing"
        assert f'prefix <code class="nowrap">"{input_type}: "</code>' in response.content.decode()
    # A model without prefixes says the input type changed nothing.
    response = _embed(admin_client, texts, model=TINY, input_type="query")
    assert "this model has no query prefix: the texts are embedded as typed" in _text(response)


def test_the_heat_map_shows_the_cosine_of_every_two_texts(
    console: ManagedServer, sidecar: SidecarProcess, reader_client: Client
) -> None:
    texts = ["the red cat", "the red cat in the house", "postgres server database", "blue water"]
    response = _embed(reader_client, texts)
    assert response.status_code == 200
    expected = cosine_matrix(_sidecar_vectors(sidecar.url, TINY, texts))
    table = re.search(r'<table class="heatmap".*?</table>', response.content.decode(), re.S)
    assert table is not None
    cells = re.findall(r'data-cosine="([-0-9.]+)"[^>]*>([-0-9.]+)</td>', table.group(0))
    assert len(cells) == len(texts) ** 2
    exact = np.array([float(value) for value, _ in cells]).reshape(len(texts), len(texts))
    shown = np.array([float(value) for _, value in cells]).reshape(len(texts), len(texts))
    np.testing.assert_allclose(exact, expected, atol=1e-5)
    np.testing.assert_allclose(shown, expected, atol=0.005 + 1e-9)  # two decimals in the cell
    np.testing.assert_allclose(np.diag(exact), 1.0, atol=1e-5)
    # Table markup a screen reader can walk: headers for the rows and columns, a caption.
    assert "<caption" in table.group(0)
    assert table.group(0).count('scope="col"') == len(texts) + 1
    assert table.group(0).count('scope="row"') == len(texts)


def test_one_text_has_no_heat_map(console: ManagedServer, reader_client: Client) -> None:
    response = _embed(reader_client, ["hello world"])
    assert response.status_code == 200
    assert 'class="heatmap"' not in response.content.decode()
    assert response.context["embedding"].texts[0].tokens == 4  # [CLS] hello world [SEP]


def test_a_text_longer_than_the_model_reads_is_marked_truncated(
    console: ManagedServer, reader_client: Client
) -> None:
    long_text = " ".join(["the red cat"] * 20)  # 60 words, the model reads 32 tokens
    response = _embed(reader_client, [long_text, "the red cat"])
    first, second = response.context["embedding"].texts
    assert (first.tokens, first.truncated) == (MAX_SEQ_LENGTH, True)
    assert (second.tokens, second.truncated) == (5, False)
    assert _text(response).count("truncated") == 1


def test_too_many_texts_are_refused_with_the_reason(
    console: ManagedServer, reader_client: Client
) -> None:
    texts = [f"text {i}" for i in range(MAX_TEXTS + 3)]
    response = _embed(reader_client, texts, HTTP_HX_REQUEST="true")
    assert response.status_code == 422
    assert f"{MAX_TEXTS + 3} texts: at most {MAX_TEXTS} at a time. Remove 3 lines." in _text(
        response
    )
    assert "embedding" not in response.context
    # The typed texts stay in the form, to be shortened rather than typed again.
    assert "text 34" in response.content.decode()
    assert _embed(reader_client, texts[:MAX_TEXTS]).status_code == 200


def test_too_long_texts_and_no_text_are_refused_with_the_reason(
    console: ManagedServer, reader_client: Client
) -> None:
    response = _embed(reader_client, ["fine", "x" * (MAX_CHARS + 1), "also fine", "y" * 5000])
    assert response.status_code == 422
    page = _text(response)
    assert f"Text 2 has {MAX_CHARS + 1:,} characters, more than {MAX_CHARS:,}" in page
    assert f"Text 4 has 5,000 characters, more than {MAX_CHARS:,}" in page
    response = _embed(reader_client, ["   ", ""])
    assert response.status_code == 422
    assert "Enter at least one text." in _text(response)
    response = _embed(reader_client, ["nul \0 here"])  # PostgreSQL text cannot hold it
    assert response.status_code == 422
    assert "Null characters are not allowed." in _text(response)
    # Every problem at once, not one per try.
    response = _embed(reader_client, ["z" * (MAX_CHARS + 1)] + ["a"] * MAX_TEXTS)
    assert f"{MAX_TEXTS + 1} texts: at most {MAX_TEXTS}" in _text(response)
    assert "Text 1 has" in _text(response)


def test_a_model_that_is_not_deployed_is_refused(
    console: ManagedServer, reader_client: Client
) -> None:
    response = _embed(reader_client, ["hello"], model="nothing-here:v1")
    assert response.status_code == 422
    assert "nothing-here:v1 is not deployed (any more): choose a deployed model." in _text(response)


def test_no_model_deployed_links_to_the_models_page(
    console: ManagedServer, settings: object, reader_client: Client, tmp_path: Path
) -> None:
    empty = start_sidecar(tmp_path / "empty-sidecar")
    try:
        settings.INFERENCE_URL = empty.url  # type: ignore[attr-defined]
        response = reader_client.get(reverse("playground:page"))
    finally:
        empty.stop()
    assert response.status_code == 200
    page = response.content.decode()
    assert f'<a href="{reverse("deployments:models")}">Deploy one on the Models page</a>' in page
    assert "No model is deployed yet." in _text(response)
    assert 'name="texts"' not in page


def test_a_sidecar_that_is_down_is_said_not_a_500(
    console: ManagedServer, settings: object, reader_client: Client
) -> None:
    settings.INFERENCE_URL = "http://127.0.0.1:9"  # type: ignore[attr-defined]  # discard port
    page = reader_client.get(reverse("playground:page"))
    assert page.status_code == 200
    assert "The inference sidecar cannot be reached" in _text(page)
    response = _embed(reader_client, ["hello"], HTTP_HX_REQUEST="true")
    assert response.status_code == 503
    assert "The inference sidecar cannot be reached" in _text(response)
    assert "http://127.0.0.1:9" in _text(response)
    page = reader_client.get(reverse("playground:page"), {"tab": "rerank"})
    assert page.status_code == 200
    assert "The inference sidecar cannot be reached" in _text(page)
    response = _rank(reader_client, QUERY, ["hello"], HTTP_HX_REQUEST="true")
    assert response.status_code == 503
    assert "http://127.0.0.1:9" in _text(response)
    response = _hybrid(reader_client, "cat", HTTP_HX_REQUEST="true")
    assert response.status_code == 503
    assert "its rerankers are unknown now" in _text(response)


def test_the_sql_shown_reproduces_the_result(
    scratch: psycopg.Connection, admin_client: Client, prefixed_model: str
) -> None:
    for model, input_type in (
        (TINY, "none"),
        (prefixed_model, "query"),
        (prefixed_model, "passage"),
    ):
        response = _embed(admin_client, AWKWARD, model=model, input_type=input_type)
        assert response.status_code == 200
        shown = response.context["embedding"]
        rows = scratch.execute(shown.sql).fetchall()
        assert [row[0] for row in rows] == list(range(1, len(AWKWARD) + 1))
        from_sql = np.array([json.loads(row[-1]) for row in rows], dtype=np.float64)
        np.testing.assert_allclose(_cosines(from_sql, _shown_vectors(response)), 1.0, atol=1e-6)
        for row, text in zip(rows, shown.texts, strict=True):
            _, dimensions, norm, cosines, _ = row
            assert dimensions == text.dimensions
            assert norm == pytest.approx(text.norm, abs=1e-5)
            np.testing.assert_allclose(cosines, shown.similarities[text.number - 1], atol=1e-5)
    # Nothing the texts said was run: the table they name is not dropped, it never existed.
    assert scratch.execute("SELECT to_regclass('playground_documents')").fetchone() == (None,)


def test_the_sql_for_one_text_reproduces_it(
    scratch: psycopg.Connection, admin_client: Client
) -> None:
    response = _embed(admin_client, ["postgres server"])
    row = scratch.execute(response.context["embedding"].sql).fetchone()
    assert row is not None and len(row) == 4  # n, dimensions, norm, embedding: no cosines
    vector = np.array(json.loads(row[-1]))
    assert _cosines(vector[None, :], _shown_vectors(response))[0] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("conforming", ["on", "off"])
def test_sql_literals_read_back_as_the_text(scratch: psycopg.Connection, conforming: str) -> None:
    scratch.execute(f"SET standard_conforming_strings = {conforming}")
    scratch.execute("SET escape_string_warning = off")
    tricky = [*AWKWARD, "\\", "\\'", "'\\", "line\nbreak", "tab\there", "E'x'", "ends with \\"]
    for text in tricky:
        assert scratch.execute(f"SELECT {sql_literal(text)}").fetchone() == (text,)


def test_the_curl_shown_reproduces_the_result(
    console: ManagedServer, sidecar: SidecarProcess, prefixed_model: str, admin_client: Client
) -> None:
    response = _embed(admin_client, AWKWARD, model=prefixed_model, input_type="query")
    shown = response.context["embedding"]
    assert shown.curl.startswith(f"curl -sS {sidecar.url}/v1/embeddings")
    # Run by a real shell: the quoting holds whatever the texts contain.
    ran = subprocess.run(["bash", "-c", shown.curl], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    answer = json.loads(ran.stdout)
    vectors = np.array([row["embedding"] for row in answer["data"]], dtype=np.float64)
    np.testing.assert_allclose(_cosines(vectors, _shown_vectors(response)), 1.0, atol=1e-6)
    body = json.loads(shlex.split(shown.curl)[-1])
    assert body == {"model": prefixed_model, "input": AWKWARD, "input_type": "query"}


def test_the_curl_for_a_sidecar_on_a_unix_socket_names_the_socket() -> None:
    body = {"model": TINY, "input": ["it's"]}
    curl = curl_command("unix:/run/my sidecar.sock", body, token=False)
    words = shlex.split(curl)
    assert words[:5] == [
        "curl",
        "-sS",
        "--unix-socket",
        "/run/my sidecar.sock",
        "http://sidecar/v1/embeddings",
    ]
    assert json.loads(words[-1]) == body


def test_the_curl_sends_the_token_from_the_environment_without_showing_it(
    console: ManagedServer, settings: object, admin_client: Client
) -> None:
    settings.INFERENCE_TOKEN = "s3cret-token"  # type: ignore[attr-defined]
    response = _embed(admin_client, ["hello"])
    # (The session's sidecar wants no token; the page only shows how to send one.)
    assert response.status_code == 200
    curl = response.context["embedding"].curl
    assert '-H "Authorization: Bearer $INFERENCE_TOKEN"' in curl
    assert "s3cret-token" not in response.content.decode()


# -- the semantic search demo -----------------------------------------------------------------

# Planted documents and queries made of the tiny model's words (English) and of German words
# it spells out letter by letter: the query is each planted document's nearest neighbour.
PLANTED = [
    demo.Document(9001, "en", "planted", "the small red cat and the old dog sat in the house"),
    demo.Document(9002, "de", "planted", "die kleine rote Katze schläft neben dem alten Hund"),
]
QUERIES = [
    ("small red cat and old dog in the house", 9001),
    ("kleine rote Katze neben altem Hund", 9002),
]


def _tiny(sidecar: SidecarProcess) -> ModelFacts:
    return sidecar.client.model_facts_of(TINY)


def _search(client: Client, query: str, k: int = 5, **headers: str):  # type: ignore[no-untyped-def]
    return client.get(reverse("playground:search"), {"q": query, "k": k}, **headers)


def test_setup_without_the_extensions_allowed_says_so_and_links_to_server_parameters(
    console: ManagedServer, no_demo_database: None, admin_client: Client
) -> None:
    link = f'<a href="{reverse("serverparams:blade")}?q=azure.extensions">'
    page = admin_client.get(reverse("playground:page"))
    assert page.status_code == 200
    assert "needs VECTOR and AZURE_LOCAL_AI in the server parameter azure.extensions" in _text(page)
    assert link in page.content.decode()
    response = admin_client.post(
        reverse("playground:setup"), {"model": TINY}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 422
    assert "The sample table was not created." in _text(response)
    assert link in response.content.decode()
    with console.connect() as conn:  # nothing was created on the way
        assert not conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [demo.DATABASE]
        ).fetchone()
    # One allowed, the other not: the message names only the missing one.
    with console.connect() as conn:
        allow_extensions(conn, "vector")
    response = admin_client.post(reverse("playground:setup"), {"model": TINY})
    assert "needs AZURE_LOCAL_AI in the server parameter azure.extensions" in _text(response)


def test_only_admins_create_the_sample_table(
    allowed: ManagedServer, no_demo_database: None, reader_client: Client
) -> None:
    assert reader_client.post(reverse("playground:setup"), {"model": TINY}).status_code == 403
    page = reader_client.get(reverse("playground:page"))
    assert "An admin creates the sample table" in _text(page)
    assert reverse("playground:setup") not in page.content.decode()


def test_search_before_setup_says_so(
    console: ManagedServer, no_demo_database: None, reader_client: Client
) -> None:
    response = _search(reader_client, "hello", HTTP_HX_REQUEST="true")
    assert response.status_code == 422
    assert demo.NOT_SET_UP in _text(response)


def test_setup_creates_the_table_and_a_second_run_keeps_it(
    allowed: ManagedServer, no_demo_database: None, sidecar: SidecarProcess, admin_client: Client
) -> None:
    response = admin_client.post(
        reverse("playground:setup"), {"model": TINY}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200, _text(response)
    count = len(demo.samples().documents)
    assert f"Sample table created. {count} documents embedded with {TINY}" in _text(response)
    with allowed.connect(demo.DATABASE) as conn:
        rows = conn.execute(
            "SELECT count(*), count(DISTINCT lang), min(vector_dims(embedding)),"
            " max(vector_dims(embedding)) FROM playground_documents"
        ).fetchone()
        assert rows == (count, len(demo.samples().languages), 32, 32)
        index = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = %s", [demo.INDEX]
        ).fetchone()
        assert index is not None and "hnsw (embedding vector_cosine_ops)" in index[0]
        # Each row holds its own text's embedding, as create_embeddings gives it.
        body, stored = conn.execute(
            "SELECT body, embedding::real[] FROM playground_documents WHERE id = 7"
        ).fetchone()  # type: ignore[misc]
        direct = conn.execute(
            "SELECT azure_local_ai.create_embeddings(%s, %s)", [TINY, body]
        ).fetchone()[0]  # type: ignore[index]
        np.testing.assert_allclose(stored, direct, atol=1e-6)
    again = admin_client.post(reverse("playground:setup"), {"model": TINY}, HTTP_HX_REQUEST="true")
    assert again.status_code == 200
    assert "Nothing to do." in _text(again)
    assert again.context["setup_outcome"].created is False
    # Other documents (or another model) replace the table.
    outcome = demo.setup(_tiny(sidecar), documents=PLANTED)
    assert outcome.created and outcome.table.documents == len(PLANTED)
    with allowed.connect(demo.DATABASE) as conn:
        assert conn.execute("SELECT count(*) FROM playground_documents").fetchone() == (2,)


def test_search_finds_the_planted_neighbour_in_two_languages(
    allowed: ManagedServer, no_demo_database: None, sidecar: SidecarProcess, reader_client: Client
) -> None:
    demo.setup(_tiny(sidecar), documents=[*demo.samples().documents, *PLANTED])
    for query, planted in QUERIES:
        response = _search(reader_client, query, HTTP_HX_REQUEST="true")
        assert response.status_code == 200, _text(response)
        result = response.context["search"]
        assert result.matches[0].id == planted, (query, result.matches)
        assert len(result.matches) == demo.DEFAULT_K
        similarities = [m.similarity for m in result.matches]
        assert similarities == sorted(similarities, reverse=True)
        assert result.elapsed_ms > 0
        page = response.content.decode()
        assert f'<tr data-id="{planted}">' in page
        assert "The query took" in page and html.escape(result.sql) in page


def test_the_search_sql_shown_reproduces_the_result_through_the_index(
    allowed: ManagedServer, no_demo_database: None, sidecar: SidecarProcess, reader_client: Client
) -> None:
    demo.setup(_tiny(sidecar), documents=[*demo.samples().documents, *PLANTED])
    query = "it's the 'cat' \\ house; DROP TABLE playground_documents; --"
    response = _search(reader_client, query, k=7)
    assert response.status_code == 200
    result = response.context["search"]
    assert len(result.matches) == 7
    with allowed.connect(demo.DATABASE) as conn:
        rows = conn.execute(result.sql).fetchall()
        assert [row[0] for row in rows] == [m.id for m in result.matches]
        np.testing.assert_allclose(
            [row[4] for row in rows], [m.similarity for m in result.matches], atol=1e-6
        )
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + result.sql))
        assert f"Index Scan using {demo.INDEX}" in plan, plan
        # The query's text was a value: the table it names is still there.
        assert conn.execute("SELECT count(*) FROM playground_documents").fetchone()[0] > 300  # type: ignore[index]


def test_search_refuses_bad_input_with_the_reason(
    allowed: ManagedServer, reader_client: Client
) -> None:
    response = _search(reader_client, "", HTTP_HX_REQUEST="true")
    assert response.status_code == 422
    assert "Type something to search for." in _text(response)
    response = _search(reader_client, "cat", k=demo.MAX_K + 1, HTTP_HX_REQUEST="true")
    assert response.status_code == 422
    assert f"At most {demo.MAX_K} matches." in _text(response)
    response = _search(reader_client, "x" * (demo.MAX_QUERY_CHARS + 1), HTTP_HX_REQUEST="true")
    assert response.status_code == 422
    assert f"at most {demo.MAX_QUERY_CHARS}" in _text(response)


def test_the_shipped_samples_state_their_license_and_languages(
    console: ManagedServer, reader_client: Client
) -> None:
    samples = demo.samples()
    assert 200 <= len(samples.documents) <= 500
    assert len({d.id for d in samples.documents}) == len(samples.documents)
    assert {"English", "German", "French", "Spanish"} <= set(samples.languages)
    non_latin = re.compile(r"[\u0400-\u04FF\u3040-\u30FF\u4E00-\u9FFF]")
    assert any(non_latin.search(d.text) for d in samples.documents)
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert f'license = "{samples.license}"' in pyproject
    assert samples.license in samples.notice
    page = reader_client.get(reverse("playground:page"))
    assert samples.notice in _text(page)


def test_a_sidecar_refusal_during_setup_is_said(
    allowed: ManagedServer, no_demo_database: None, sidecar: SidecarProcess, tiny_model_dir: Path
) -> None:
    """A model the page thought deployed but the sidecar no longer serves: the SQL's error,
    in words, and no half-made table."""
    sidecar.client.register("tiny-gone:v1", str(tiny_model_dir), load=False)
    gone = sidecar.client.model_facts_of("tiny-gone:v1")
    with pytest.raises(demo.DemoError, match="is not deployed"):
        demo.setup(gone)
    with allowed.connect(demo.DATABASE) as conn:
        assert conn.execute("SELECT to_regclass('playground_documents')").fetchone() == (None,)


def test_the_demo_says_when_the_managed_server_is_down(
    console: ManagedServer, monkeypatch: pytest.MonkeyPatch, reader_client: Client
) -> None:
    monkeypatch.setenv("MANAGED_DATABASE_URL", "postgresql://nobody@127.0.0.1:9/postgres")
    page = reader_client.get(reverse("playground:page"))
    assert page.status_code == 200
    assert "The managed server cannot be asked about the demo." in _text(page)
    response = _search(reader_client, "cat", HTTP_HX_REQUEST="true")
    assert response.status_code == 503
    assert "Cannot connect to the managed server" in _text(response)


def test_two_setups_at_once_make_one_table(
    allowed: ManagedServer, no_demo_database: None, sidecar: SidecarProcess
) -> None:
    """The second waits on the first's lock, then finds the table made and keeps it."""
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda _: demo.setup(_tiny(sidecar), documents=PLANTED), range(2)))
    assert sorted(outcome.created for outcome in outcomes) == [False, True]


# -- the Rerank tab ---------------------------------------------------------------------------

QUERY = "how does a database find similar vectors"
DOCUMENTS = [
    "The quick brown fox jumps over the lazy dog.",
    "PostgreSQL stores embeddings in a vector column and searches them with an index.",
    "Sentence embeddings map text to points where similar meanings lie close together.",
    "The database server runs on a small computer by the river.",
    "Die Datenbank speichert Vektoren für die semantische Suche.",
    *AWKWARD,
]


def _rank(client: Client, query: str, documents: list[str], model: str = RERANKER, **headers: str):  # type: ignore[no-untyped-def]
    return client.post(
        reverse("playground:rank"),
        {"model": model, "query": query, "documents": "\n".join(documents)},
        **headers,
    )


def _reference_order(scores: np.ndarray) -> list[int]:
    """Positions (from 0) best first; equal scores keep their order, as rank() does."""
    return [int(i) for i in np.argsort(-scores, kind="stable")]


def test_the_rerank_tab_ranks_in_sql_as_the_cross_encoder_scores(
    allowed: ManagedServer, reranker: Reranker, reader_client: Client
) -> None:
    response = _rank(reader_client, QUERY, DOCUMENTS)
    assert response.status_code == 200, _text(response)[:2000]
    ranking = response.context["ranking"]
    expected = reference_scores(reranker.folder, QUERY, DOCUMENTS)
    assert len(set(np.round(expected, 4))) == len(DOCUMENTS), "scores too close to order"
    assert [d.number - 1 for d in ranking.ranked] == _reference_order(expected)
    assert [d.rank for d in ranking.ranked] == list(range(1, len(DOCUMENTS) + 1))
    np.testing.assert_allclose([d.score for d in ranking.documents], expected, atol=1e-4)
    assert [d.text for d in ranking.documents] == DOCUMENTS
    assert ranking.probabilities  # a one-label cross-encoder: sigmoid scores, bars on 0..1
    for d in ranking.documents:
        assert d.bar == pytest.approx(d.score * 100, abs=1e-6)
    assert ranking.elapsed_ms > 0
    page = response.content.decode()
    # Both orders, each document once in each, with its bar.
    before = re.search(r'<ol class="rank-list" id="rank-before".*?</ol>', page, re.S)
    after = re.search(r'<ol class="rank-list ranked" id="rank-after".*?</ol>', page, re.S)
    assert before is not None and after is not None
    numbers = [int(n) for n in re.findall(r'data-number="(\d+)"', before.group(0))]
    assert numbers == list(range(1, len(DOCUMENTS) + 1))
    ranked = [int(n) for n in re.findall(r'data-number="(\d+)"', after.group(0))]
    assert ranked == [i + 1 for i in _reference_order(expected)]
    assert page.count('class="score-bar"') == 2 * len(DOCUMENTS)
    for text in AWKWARD:  # escaped in the page, never pasted raw
        assert html.escape(text) in page


def test_the_rank_sql_and_curl_shown_reproduce_the_ranking(
    scratch: psycopg.Connection, sidecar: SidecarProcess, reranker: Reranker, admin_client: Client
) -> None:
    response = _rank(admin_client, QUERY, DOCUMENTS)
    assert response.status_code == 200, _text(response)[:2000]
    ranking = response.context["ranking"]
    rows = scratch.execute(ranking.sql).fetchall()
    assert [(r, int(i)) for r, i, _ in rows] == [(d.rank, d.number) for d in ranking.ranked]
    np.testing.assert_allclose(
        [score for _, _, score in rows], [d.score for d in ranking.ranked], atol=1e-6
    )
    # Nothing the documents said was run.
    assert scratch.execute("SELECT to_regclass('playground_documents')").fetchone() == (None,)
    assert ranking.curl.startswith(f"curl -sS {sidecar.url}/v1/rerank")
    ran = subprocess.run(["bash", "-c", ranking.curl], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    results = json.loads(ran.stdout)["results"]
    assert [r["index"] + 1 for r in results] == [d.number for d in ranking.ranked]
    np.testing.assert_allclose(
        [r["relevance_score"] for r in results], [d.score for d in ranking.ranked], atol=1e-5
    )
    body = json.loads(shlex.split(ranking.curl)[-1])
    assert body == {"model": RERANKER, "query": QUERY, "documents": DOCUMENTS}


def test_ranking_leaves_no_extension_behind(
    allowed: ManagedServer, no_demo_database: None, reranker: Reranker, reader_client: Client
) -> None:
    """Without the demo's database, rank() runs in postgres, whose extension is made for the
    statement and rolled back."""
    response = _rank(reader_client, QUERY, DOCUMENTS[:3])
    assert response.status_code == 200, _text(response)[:2000]
    ranking = response.context["ranking"]
    assert (ranking.database, ranking.created_extension) == ("postgres", True)
    assert "was rolled back" in _text(response)
    with allowed.connect() as conn:
        assert (
            conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'azure_local_ai'").fetchone()
            is None
        )


def test_fifty_documents_are_ranked_and_fifty_one_refused(
    allowed: ManagedServer, reranker: Reranker, reader_client: Client
) -> None:
    documents = [f"document {i} about vectors in a database" for i in range(1, 52)]
    response = _rank(reader_client, QUERY, documents[: rerank.MAX_DOCUMENTS])
    assert response.status_code == 200, _text(response)[:2000]
    ranking = response.context["ranking"]
    assert sorted(d.number for d in ranking.documents) == list(range(1, 51))
    expected = reference_scores(reranker.folder, QUERY, documents[:50])
    np.testing.assert_allclose([d.score for d in ranking.documents], expected, atol=1e-4)

    response = _rank(reader_client, QUERY, documents, HTTP_HX_REQUEST="true")
    assert response.status_code == 422
    assert "51 documents: at most 50 at a time. Remove 1 line." in _text(response)
    assert "ranking" not in response.context
    page = response.content.decode()
    assert "<html" not in page and 'id="rerank-section"' in page  # the fragment
    # The typed documents and query stay in the form, to be shortened rather than typed again.
    assert "document 51 about vectors in a database" in page
    assert f'value="{QUERY}"' in page


def test_an_empty_query_and_no_documents_are_refused_with_the_reason(
    console: ManagedServer, reranker: Reranker, reader_client: Client
) -> None:
    response = _rank(reader_client, "   ", DOCUMENTS[:2])
    assert response.status_code == 422
    assert "Type a query to rank the documents by." in _text(response)
    assert html.escape(DOCUMENTS[1]) in response.content.decode()  # kept
    response = _rank(reader_client, QUERY, ["", "  "])
    assert response.status_code == 422
    assert "Enter at least one document." in _text(response)
    response = _rank(reader_client, QUERY, ["fine", "x" * (rerank.MAX_CHARS + 1)])
    assert response.status_code == 422
    assert f"Document 2 has {rerank.MAX_CHARS + 1:,} characters" in _text(response)
    response = _rank(reader_client, QUERY, ["fine"], model=TINY)  # not a reranker
    assert response.status_code == 422
    assert f"{TINY} is not deployed (any more)" in _text(response)


def test_a_sql_error_is_said_in_the_form_and_keeps_the_input(
    console: ManagedServer, no_demo_database: None, reranker: Reranker, reader_client: Client
) -> None:
    """AZURE_LOCAL_AI not allowed: the extension cannot be made for the statement."""
    response = _rank(reader_client, QUERY, DOCUMENTS[:3], HTTP_HX_REQUEST="true")
    assert response.status_code == 422
    page = _text(response)
    assert "Nothing was ranked." in page and "not allow-listed" in page
    assert f'<a href="{reverse("serverparams:blade")}?q=azure.extensions">' in (
        response.content.decode()
    )
    assert f'value="{QUERY}"' in response.content.decode()
    assert html.escape(DOCUMENTS[2]) in response.content.decode()


def test_the_rerank_tab_offers_the_sample_and_the_default_reranker(
    console: ManagedServer, sidecar: SidecarProcess, reranker: Reranker, reader_client: Client
) -> None:
    page = reader_client.get(reverse("playground:page"), {"tab": "rerank"})
    assert page.status_code == 200
    assert html.escape(rerank.SAMPLE_QUERY) in page.content.decode()
    for document in rerank.SAMPLE_DOCUMENTS:
        assert html.escape(document) in page.content.decode()
    assert 'aria-current="page">Rerank</a>' in page.content.decode()
    sidecar.client.update_settings({"default_rerank_model": RERANKER})
    try:
        page = reader_client.get(reverse("playground:page"), {"tab": "rerank"})
    finally:
        sidecar.client.update_settings({"default_rerank_model": ""})
    assert f'<option value="{RERANKER}" selected>{RERANKER} (default)</option>' in (
        page.content.decode()
    )
    # The sample button puts the sample back, whatever was typed.
    response = reader_client.post(
        reverse("playground:rank"),
        {"model": RERANKER, "query": "", "documents": "mine", "sample": "1"},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200
    assert html.escape(rerank.SAMPLE_DOCUMENTS[1]) in response.content.decode()
    assert "mine" not in response.content.decode()


def test_without_a_reranker_the_rerank_tab_points_at_add_a_model(
    console: ManagedServer, reader_client: Client
) -> None:
    page = reader_client.get(reverse("playground:page"), {"tab": "rerank"})
    assert page.status_code == 200
    assert "No reranker is deployed yet." in _text(page)
    assert f'<a href="{reverse("deployments:add")}">Add one in Models &gt; Add a model</a>' in (
        page.content.decode()
    )
    assert 'name="documents"' not in page.content.decode()
    response = _rank(reader_client, QUERY, DOCUMENTS[:2])
    assert response.status_code == 422
    assert "No reranker is deployed yet." in _text(response)


def test_the_embed_tab_offers_embedding_models_only(
    console: ManagedServer, reranker: Reranker, reader_client: Client
) -> None:
    page = reader_client.get(reverse("playground:page"))
    assert page.status_code == 200
    choices = [uri for uri, _ in page.context["form"].fields["model"].choices]
    assert TINY in choices and RERANKER not in choices
    embed_section = re.search(r'<div id="embed-section".*?</form>', page.content.decode(), re.S)
    assert embed_section is not None and RERANKER not in embed_section.group(0)
    assert RERANKER not in [uri for uri, _ in page.context["setup_form"].fields["model"].choices]
    response = _embed(reader_client, ["hello"], model=RERANKER)
    assert response.status_code == 422
    assert f"{RERANKER} is not deployed (any more): choose a deployed model." in _text(response)
    # The Rerank tab offers it, and only it.
    page = reader_client.get(reverse("playground:page"), {"tab": "rerank"})
    select = re.search(r'<select id="rerank-model".*?</select>', page.content.decode(), re.S)
    assert select is not None
    assert re.findall(r'<option value="([^"]+)"', select.group(0)) == [RERANKER]


# -- hybrid search + rerank -------------------------------------------------------------------

HYBRID_QUERY = "small red cat and old dog in the house"


def _hybrid(client: Client, query: str, reranker: str = RERANKER, **headers: str):  # type: ignore[no-untyped-def]
    return client.get(
        reverse("playground:search"),
        {"q": query, "mode": "hybrid", "reranker": reranker},
        **headers,
    )


def _rrf(*lists: list[int]) -> list[tuple[int, float]]:
    """Reciprocal rank fusion (k = 60) of ranked id lists: (id, score), best first, ties by
    id."""
    scores: dict[int, float] = {}
    for ids in lists:
        for rank, doc_id in enumerate(ids, 1):
            scores[doc_id] = scores.get(doc_id, 0.0) + 1.0 / (60 + rank)
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def test_hybrid_search_fuses_full_text_and_vectors_and_reranks_the_top_20(
    allowed: ManagedServer,
    no_demo_database: None,
    sidecar: SidecarProcess,
    reranker: Reranker,
    reader_client: Client,
) -> None:
    demo.setup(_tiny(sidecar), documents=[*demo.samples().documents, *PLANTED])
    response = _hybrid(reader_client, HYBRID_QUERY, HTTP_HX_REQUEST="true")
    assert response.status_code == 200, _text(response)[:2000]
    result = response.context["hybrid"]
    fulltext, vector, fused, reranked = result.stages
    assert 0 < len(fulltext.items) <= demo.CANDIDATES
    assert len(vector.items) == demo.CANDIDATES
    assert fulltext.items[0].id == 9001  # every word of the query is in it
    scores = [i.score for i in fulltext.items]
    assert scores == sorted(scores, reverse=True)
    similarities = [i.score for i in vector.items]
    assert similarities == sorted(similarities, reverse=True)
    # The fused list is the RRF of the two lists, as computed here.
    expected = _rrf(fulltext.ids, vector.ids)
    assert result.candidates == len(expected)
    assert fused.ids == [doc_id for doc_id, _ in expected[: demo.RERANK_TOP]]
    np.testing.assert_allclose(
        [i.score for i in fused.items], [s for _, s in expected[: demo.RERANK_TOP]], rtol=1e-12
    )
    for item in fused.items:
        assert item.fulltext_rank == (
            fulltext.ids.index(item.id) + 1 if item.id in fulltext.ids else None
        )
        assert item.vector_rank == (
            vector.ids.index(item.id) + 1 if item.id in vector.ids else None
        )
    # The reranked list is the fused top 20 in the order of the reranker's scores.
    bodies = [i.body for i in fused.items]
    reference = reference_scores(reranker.folder, HYBRID_QUERY, bodies)
    assert reranked.ids == [fused.ids[i] for i in _reference_order(reference)]
    by_id = dict(zip(fused.ids, reference, strict=True))
    np.testing.assert_allclose(
        [i.score for i in reranked.items], [by_id[i] for i in reranked.ids], atol=1e-4
    )
    assert [i.fused_rank for i in reranked.items] == [fused.ids.index(i) + 1 for i in reranked.ids]
    for stage in result.stages:
        assert stage.elapsed_ms > 0
    page = response.content.decode()
    for stage in result.stages:
        assert html.escape(stage.sql) in page
        assert f'id="stage-{stage.key}"' in page
    # Each statement shown gives its list.
    with allowed.connect(demo.DATABASE) as conn:
        for stage in (fulltext, vector, fused, reranked):
            rows = conn.execute(stage.sql).fetchall()
            assert [int(row[0]) for row in rows] == stage.ids, stage.key


def test_hybrid_search_is_offered_only_with_a_reranker(
    allowed: ManagedServer, no_demo_database: None, sidecar: SidecarProcess, reader_client: Client
) -> None:
    demo.setup(_tiny(sidecar), documents=PLANTED)
    page = reader_client.get(reverse("playground:page"))
    assert 'value="hybrid"' not in page.content.decode()
    assert "needs a deployed reranker" in _text(page)
    assert f'<a href="{reverse("deployments:add")}">' in page.content.decode()
    response = _hybrid(reader_client, "cat", HTTP_HX_REQUEST="true")
    assert response.status_code == 422
    assert "none is deployed: add one in Models > Add a model" in _text(response)


def test_hybrid_search_offers_the_deployed_rerankers(
    allowed: ManagedServer,
    no_demo_database: None,
    sidecar: SidecarProcess,
    reranker: Reranker,
    reader_client: Client,
) -> None:
    demo.setup(_tiny(sidecar), documents=PLANTED)
    page = reader_client.get(reverse("playground:page"))
    assert 'value="hybrid"' in page.content.decode()
    assert f'<option value="{RERANKER}"' in page.content.decode()
    response = _hybrid(reader_client, "cat", reranker=TINY, HTTP_HX_REQUEST="true")
    assert response.status_code == 422
    assert f"{TINY} is not a deployed reranker" in _text(response)
    # Without htmx, the whole page, the hybrid mode still chosen.
    response = _hybrid(reader_client, "small red cat")
    assert response.status_code == 200, _text(response)[:2000]
    assert 'value="hybrid" checked' in response.content.decode()
    assert len(response.context["hybrid"].reranked.items) == len(PLANTED)
