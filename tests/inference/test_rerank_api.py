"""The sidecar's rerank routes, spoken to in raw HTTP against a real sidecar process serving a
random-weight cross-encoder deployed through the product's pipeline: every shape equals
sentence-transformers' ``CrossEncoder.predict`` on the same pairs within 1e-4, in the same order."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference import protocol
from tests.fixtures.rerankers import Reranker, deploy_reranker
from tests.fixtures.sidecar import TINY_URI, SidecarProcess
from tests.fixtures.stmodels import CORPUS

QUERY = "how does a database find similar vectors"
DOCUMENTS = [
    *CORPUS[:6],
    "",  # an empty document is scored like any text
    "vectors " * 400,  # far past the model's 128 tokens: the document side is cut
    "数据库中的向量搜索",
]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reranker(
    sidecar: SidecarProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Reranker]:
    model = deploy_reranker(tmp_path_factory.mktemp("reranker"), "bert", "rerank-bert:v1")
    sidecar.client.register(model.uri, str(model.stored.path))
    yield model
    sidecar.client.unregister(model.uri)


@pytest.fixture(scope="module")
def http(sidecar: SidecarProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sidecar.url, timeout=60) as client:
        yield client


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return error


def _ranked(scores: np.ndarray) -> list[int]:
    return [int(i) for i in np.argsort(-scores, kind="stable")]


def test_cohere_shape_equals_cross_encoder(http: httpx.Client, reranker: Reranker) -> None:
    expected = reranker.predict(QUERY, DOCUMENTS)
    for path in ("/v1/rerank", "/v2/rerank"):
        response = http.post(
            path, json={"model": reranker.uri, "query": QUERY, "documents": DOCUMENTS}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == reranker.uri
        assert body["meta"]["api_version"]["version"] == path[2]
        results = body["results"]
        assert [r["index"] for r in results] == _ranked(expected)
        got = np.array([r["relevance_score"] for r in results], dtype=np.float32)
        np.testing.assert_allclose(got, expected[[r["index"] for r in results]], atol=TOLERANCE)
        assert all("document" not in r for r in results)
        assert np.all((got >= 0) & (got <= 1))  # sigmoid of the logit


def test_cohere_top_n_and_documents_as_objects(http: httpx.Client, reranker: Reranker) -> None:
    expected = reranker.predict(QUERY, DOCUMENTS)
    response = http.post(
        "/v1/rerank",
        json={
            "model": reranker.uri,
            "query": QUERY,
            "documents": [{"text": d} for d in DOCUMENTS],
            "top_n": 3,
            "return_documents": True,
        },
    )
    results = response.json()["results"]
    assert [r["index"] for r in results] == _ranked(expected)[:3]
    assert [r["document"]["text"] for r in results] == [DOCUMENTS[r["index"]] for r in results]


def test_tei_shape_equals_cross_encoder_scores_and_raw_logits(
    http: httpx.Client, reranker: Reranker
) -> None:
    for raw in (False, True):
        expected = reranker.predict(QUERY, DOCUMENTS, raw=raw)
        response = http.post(
            "/rerank",
            json={
                "model": reranker.uri,
                "query": QUERY,
                "texts": DOCUMENTS,
                "raw_scores": raw,
                "return_text": True,
            },
        )
        assert response.status_code == 200, response.text
        items = response.json()
        assert [item["index"] for item in items] == _ranked(expected)
        got = np.array([item["score"] for item in items], dtype=np.float32)
        np.testing.assert_allclose(got, expected[[i["index"] for i in items]], atol=TOLERANCE)
        assert [item["text"] for item in items] == [DOCUMENTS[i["index"]] for i in items]


def test_tei_truncate_false_refuses_a_pair_past_the_limit(
    http: httpx.Client, reranker: Reranker
) -> None:
    body = {"model": reranker.uri, "query": QUERY, "texts": ["short", "vectors " * 400]}
    error = _error(http.post("/rerank", json={**body, "truncate": False}), 413, "input_too_long")
    assert "texts[1]" in error["message"] and "128 tokens" in error["message"]
    assert http.post("/rerank", json=body).status_code == 200  # truncated by default


def test_binary_route_gives_scores_in_document_order(
    http: httpx.Client, reranker: Reranker
) -> None:
    for raw in ("false", "true"):
        response = http.post(
            protocol.RERANK_PATH,
            params={"model": reranker.uri, "raw": raw},
            content=protocol.encode_request([QUERY, *DOCUMENTS]),
            headers={"Content-Type": protocol.CONTENT_TYPE},
        )
        assert response.status_code == 200, response.text
        assert response.headers["X-Model"] == reranker.uri
        np.testing.assert_allclose(
            protocol.decode_scores(response.content),
            reranker.predict(QUERY, DOCUMENTS, raw=raw == "true"),
            atol=TOLERANCE,
        )


def test_two_hundred_documents_in_one_call(http: httpx.Client, reranker: Reranker) -> None:
    words = " ".join(CORPUS).split()
    rng = np.random.default_rng(7)
    documents = [" ".join(rng.choice(words, size=int(rng.integers(5, 90)))) for _ in range(200)]
    response = http.post(
        "/v1/rerank", json={"model": reranker.uri, "query": QUERY, "documents": documents}
    )
    results = response.json()["results"]
    expected = reranker.predict(QUERY, documents)
    assert len(results) == 200
    assert sorted(r["index"] for r in results) == list(range(200))
    got = np.empty(200, dtype=np.float32)
    for r in results:
        got[r["index"]] = r["relevance_score"]
    np.testing.assert_allclose(got, expected, atol=TOLERANCE)
    assert [r["index"] for r in results] == _ranked(got)


def test_concurrent_requests_share_runs_and_each_gets_its_own_scores(
    http: httpx.Client, reranker: Reranker
) -> None:
    queries = [QUERY, "a cat on the sofa", "PostgreSQL", "x" * 50, "vectors " * 100]
    expected = {q: reranker.predict(q, DOCUMENTS) for q in queries}

    def ask(query: str) -> np.ndarray:
        items = http.post(
            "/rerank", json={"model": reranker.uri, "query": query, "texts": DOCUMENTS}
        ).json()
        scores = np.empty(len(DOCUMENTS), dtype=np.float32)
        for item in items:
            scores[item["index"]] = item["score"]
        return scores

    with ThreadPoolExecutor(8) as pool:
        for query, got in zip(queries * 4, pool.map(ask, queries * 4), strict=True):
            np.testing.assert_allclose(got, expected[query], atol=TOLERANCE)


def test_the_default_model_is_a_setting(http: httpx.Client, reranker: Reranker) -> None:
    body = {"query": QUERY, "documents": DOCUMENTS[:3]}
    error = _error(http.post("/v1/rerank", json=body), 400, "invalid_input")
    assert "default_rerank_model" in error["message"]
    assert http.put("/settings", json={"default_rerank_model": reranker.uri}).status_code == 200
    try:
        response = http.post("/v1/rerank", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["model"] == reranker.uri
        assert http.post("/rerank", json={"query": QUERY, "texts": ["a"]}).status_code == 200
    finally:
        http.put("/settings", json={"default_rerank_model": ""})
    bad = http.put("/settings", json={"default_rerank_model": "not a uri"})
    assert bad.status_code == 422 and "default_rerank_model" in bad.text


def test_each_kind_refuses_the_other_kinds_work(http: httpx.Client, reranker: Reranker) -> None:
    error = _error(
        http.post("/v1/rerank", json={"model": TINY_URI, "query": "q", "documents": ["d"]}),
        400,
        "wrong_model_kind",
    )
    assert "is an embedding model" in error["message"]
    error = _error(
        http.post("/v1/embeddings", json={"model": reranker.uri, "input": ["a text"]}),
        400,
        "wrong_model_kind",
    )
    assert "is a reranker" in error["message"] and "/v1/rerank" in error["message"]
    binary = http.post(
        protocol.PATH,
        params={"model": reranker.uri},
        content=protocol.encode_request(["a text"]),
        headers={"Content-Type": protocol.CONTENT_TYPE},
    )
    _error(binary, 400, "wrong_model_kind")
    chunks = http.post("/chunks", json={"model": reranker.uri, "input": ["a b c"], "size": 4})
    _error(chunks, 400, "wrong_model_kind")


def test_embedding_options_are_refused_in_rerank_requests(
    http: httpx.Client, reranker: Reranker
) -> None:
    base = {"model": reranker.uri, "query": QUERY, "documents": ["a"]}
    for key, value in (("input_type", "query"), ("dimensions", 16), ("encoding_format", "float")):
        error = _error(http.post("/v1/rerank", json={**base, key: value}), 400, "invalid_input")
        assert error["param"] == key and "reranker" in error["message"]


def test_a_reranker_lists_its_kind_and_no_dimensions(
    http: httpx.Client, reranker: Reranker
) -> None:
    item = http.get(f"/v1/models/{reranker.uri}").json()
    assert item["kind"] == "reranker"
    assert item["dimensions"] is None and item["max_tokens"] == 128
    assert item["activation"] == "sigmoid"
    assert http.get(f"/v1/models/{TINY_URI}").json()["kind"] == "embedding"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"documents": ["a"]}, "query"),
        ({"query": "", "documents": ["a"]}, "query"),
        ({"query": 3, "documents": ["a"]}, "query"),
        ({"query": "q"}, "documents"),
        ({"query": "q", "documents": []}, "documents"),
        ({"query": "q", "documents": ["a", 5]}, "documents"),
        ({"query": "q", "documents": "a"}, "documents"),
        ({"query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
        ({"query": "q", "documents": ["a"], "top_n": True}, "top_n"),
        ({"query": "q", "documents": ["a"], "return_documents": "yes"}, "return_documents"),
        ({"query": "q", "documents": ["a"], "model": 7}, "model"),
    ],
)
def test_bad_cohere_bodies_are_refused_naming_the_field(
    http: httpx.Client, reranker: Reranker, body: dict[str, Any], param: str
) -> None:
    response = http.post("/v1/rerank", json={"model": reranker.uri, **body})
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["param"] == param


def test_unknown_model_is_404(http: httpx.Client, reranker: Reranker) -> None:
    body = {"model": "nope:v1", "query": "q", "documents": ["a"]}
    error = _error(http.post("/v1/rerank", json=body), 404, "model_not_found")
    assert "nope:v1" in error["message"]


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 300) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_bodies = st.dictionaries(
    st.sampled_from(
        [
            "model",
            "query",
            "documents",
            "texts",
            "top_n",
            "return_documents",
            "raw_scores",
            "return_text",
            "truncate",
        ]
    ),
    _json | st.lists(st.text(max_size=30), max_size=5),
    max_size=7,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=_bodies, path=st.sampled_from(["/v1/rerank", "/v2/rerank", "/rerank"]))
def test_any_body_gets_an_answer_or_a_4xx_naming_the_problem(
    http: httpx.Client, reranker: Reranker, body: dict[str, Any], path: str
) -> None:
    if body.get("model") == reranker.uri or "model" not in body:
        body = {**body, "model": reranker.uri}
    response = http.post(path, content=json.dumps(body))
    assert response.status_code < 500, response.text
    if response.status_code == 200:
        answer = response.json()
        items = answer["results"] if path != "/rerank" else answer
        assert all(isinstance(item["index"], int) for item in items)
    else:
        error = response.json()["error"]
        assert error["message"] and error["code"] in {
            "invalid_input",
            "model_not_found",
            "too_many_inputs",
            "input_too_long",
        }


def test_the_binary_route_refuses_a_body_without_a_query(http: httpx.Client) -> None:
    response = http.post(
        protocol.RERANK_PATH,
        content=protocol.encode_request([]),
        headers={"Content-Type": protocol.CONTENT_TYPE},
    )
    _error(response, 400, "invalid_input")
