"""The cloud documentation's examples with the real all-MiniLM-L6-v2 (384 dimensions)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from inference.store import StoredModel
from serverparams.server import ManagedServer
from tests.fixtures.sidecar import SidecarProcess

pytestmark = pytest.mark.realmodel

MINILM = "all-MiniLM-L6-v2:v1"
DOCS = [
    "The dog chased the ball across the park.",
    "A puppy plays fetch on the grass.",
    "The stock market fell sharply on Monday.",
    "Investors worried about rising interest rates.",
    "Fresh bread is baked every morning at the bakery.",
    "PostgreSQL stores vectors with the pgvector extension.",
]


@pytest.fixture(scope="module")
def minilm(
    conn_module: psycopg.Connection, minilm_stored_model: StoredModel, sidecar: SidecarProcess
) -> Iterator[str]:
    """The model registered from SQL; unregistered afterwards (the sidecar is the session's)."""
    (model_id,) = conn_module.execute(
        "SELECT azure_local_ai.model_register(%s, %s)", [MINILM, str(minilm_stored_model.path)]
    ).fetchone()
    assert model_id == sidecar.client.model(MINILM)["id"]
    yield MINILM
    sidecar.client.unregister(MINILM)


@pytest.fixture(scope="module")
def conn_module(managed_pg: ManagedServer, ext_db: str) -> Iterator[psycopg.Connection]:
    with managed_pg.connect(ext_db) as connection:
        yield connection


def test_generated_column_matches_the_sidecar_and_finds_neighbours(
    conn_module: psycopg.Connection, minilm: str, sidecar: SidecarProcess
) -> None:
    conn = conn_module
    conn.execute("DROP TABLE IF EXISTS minilm_docs")
    conn.execute(
        f"""CREATE TABLE minilm_docs (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            description text,
            description_vector vector(384) GENERATED ALWAYS AS
                (azure_local_ai.create_embeddings('{minilm}', description)::vector) STORED)"""
    )
    try:
        for doc in DOCS:
            conn.execute("INSERT INTO minilm_docs (description) VALUES (%s)", [doc])
        stored = np.array(
            [
                row[0]
                for row in conn.execute(
                    "SELECT description_vector::real[] FROM minilm_docs ORDER BY id"
                ).fetchall()
            ],
            dtype=np.float32,
        )
        expected, _ = sidecar.client.embed(minilm, DOCS)
        assert stored.shape == (len(DOCS), 384)
        np.testing.assert_allclose(stored, expected, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-5)

        conn.execute(
            "CREATE INDEX ON minilm_docs USING hnsw (description_vector vector_cosine_ops)"
        )
        conn.execute("SET enable_seqscan = off")
        query = (
            f"SELECT description FROM minilm_docs ORDER BY description_vector <=>"
            f" azure_local_ai.create_embeddings('{minilm}', %s)::vector LIMIT 2"
        )
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + query, ["pets"]).fetchall())
        assert "Index Scan using minilm_docs_description_vector_idx" in plan
        top = [row[0] for row in conn.execute(query, ["a dog playing outside"]).fetchall()]
        assert set(top) == set(DOCS[:2])
    finally:
        conn.execute("RESET enable_seqscan")
        conn.execute("DROP TABLE minilm_docs")


def test_array_overload_with_minilm(
    conn_module: psycopg.Connection, minilm: str, sidecar: SidecarProcess
) -> None:
    rows = conn_module.execute(
        "SELECT id, embedding FROM azure_local_ai.create_embeddings(%s, %s::text[], %s::int[],"
        " batch_size => 4)",
        [minilm, DOCS, list(range(len(DOCS)))],
    ).fetchall()
    assert [row[0] for row in rows] == list(range(len(DOCS)))
    expected, _ = sidecar.client.embed(minilm, DOCS)
    np.testing.assert_allclose(
        np.array([row[1] for row in rows], dtype=np.float32), expected, atol=1e-6
    )
    (metadata,) = conn_module.execute(
        "SELECT azure_local_ai.model_metadata(%s)", [minilm]
    ).fetchone()
    assert metadata["dimensions"] == 384
    assert metadata["license"]["name"] == "Apache-2.0"
