"""The rerank routes through the clients people use, pointed at a real sidecar: Cohere's own
SDK (v1 and v2 clients), LangChain's ``CohereRerank`` (which wraps it) and LlamaIndex's
text-embeddings-inference reranker. Each gets the order and the scores of
``CrossEncoder.predict`` on the same pairs."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from tests.fixtures.rerankers import Reranker, deploy_reranker
from tests.fixtures.sidecar import SidecarProcess
from tests.fixtures.stmodels import CORPUS

cohere = pytest.importorskip("cohere", reason="the clients extra (cohere) is not installed")

QUERY = "where do the vectors live"
DOCUMENTS = [*CORPUS[:7], "vectors " * 300]


@pytest.fixture(scope="module")
def reranker(
    sidecar: SidecarProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Reranker]:
    model = deploy_reranker(tmp_path_factory.mktemp("reranker"), "xlm-roberta", "rerank-xlmr:v1")
    sidecar.client.register(model.uri, str(model.stored.path))
    yield model
    sidecar.client.unregister(model.uri)


@pytest.fixture(scope="module")
def expected(reranker: Reranker) -> np.ndarray:
    return reranker.predict(QUERY, DOCUMENTS)


def _best(expected: np.ndarray, n: int) -> list[int]:
    return [int(i) for i in np.argsort(-expected, kind="stable")[:n]]


def test_cohere_v2_client(
    sidecar: SidecarProcess, reranker: Reranker, expected: np.ndarray
) -> None:
    client = cohere.ClientV2(api_key="local", base_url=sidecar.url)
    answer = client.rerank(model=reranker.uri, query=QUERY, documents=DOCUMENTS, top_n=4)
    assert [r.index for r in answer.results] == _best(expected, 4)
    np.testing.assert_allclose(
        [r.relevance_score for r in answer.results], expected[_best(expected, 4)], atol=1e-4
    )


def test_cohere_v1_client_with_documents_returned(
    sidecar: SidecarProcess, reranker: Reranker, expected: np.ndarray
) -> None:
    client = cohere.Client(api_key="local", base_url=sidecar.url)
    answer = client.rerank(
        model=reranker.uri, query=QUERY, documents=DOCUMENTS, return_documents=True
    )
    assert [r.index for r in answer.results] == _best(expected, len(DOCUMENTS))
    assert [r.document.text for r in answer.results] == [
        DOCUMENTS[i] for i in _best(expected, len(DOCUMENTS))
    ]


def test_langchain_cohere_rerank(
    sidecar: SidecarProcess, reranker: Reranker, expected: np.ndarray
) -> None:
    langchain_cohere = pytest.importorskip("langchain_cohere", reason="clients extra")
    from langchain_core.documents import Document

    compressor = langchain_cohere.CohereRerank(
        base_url=sidecar.url, cohere_api_key="local", model=reranker.uri, top_n=3
    )
    kept = compressor.compress_documents(
        [Document(page_content=d, metadata={"n": i}) for i, d in enumerate(DOCUMENTS)], QUERY
    )
    assert [d.metadata["n"] for d in kept] == _best(expected, 3)
    np.testing.assert_allclose(
        [d.metadata["relevance_score"] for d in kept], expected[_best(expected, 3)], atol=1e-4
    )


def test_llamaindex_tei_reranker_uses_the_default_model(
    sidecar: SidecarProcess, reranker: Reranker, expected: np.ndarray
) -> None:
    tei = pytest.importorskip("llama_index.postprocessor.tei_rerank", reason="clients extra")
    from llama_index.core.schema import NodeWithScore, TextNode

    # TEI's API names no model: the sidecar's setting says which reranker answers.
    sidecar.client.update_settings({"default_rerank_model": reranker.uri})
    try:
        postprocessor = tei.TextEmbeddingInference(base_url=sidecar.url, top_n=3)
        nodes = [
            NodeWithScore(node=TextNode(text=d, id_=str(i)), score=0.0)
            for i, d in enumerate(DOCUMENTS)
        ]
        kept = postprocessor.postprocess_nodes(nodes, query_str=QUERY)
    finally:
        sidecar.client.update_settings({"default_rerank_model": ""})
    assert [int(n.node.id_) for n in kept] == _best(expected, 3)
    np.testing.assert_allclose([n.score for n in kept], expected[_best(expected, 3)], atol=1e-4)
