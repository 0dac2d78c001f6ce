"""Added models through SQL: random-weight models of each supported architecture, added from a
folder or from a Hub repository over HTTP, deployed with their parity gate, registered with the
session's sidecar, and called by the real module: ``create_embeddings`` equals
``SentenceTransformer(folder).encode`` on the same texts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest

from inference import catalog as catalog_module
from inference.intake import inspect_source
from inference.provision import deploy
from inference.store import ModelStore
from tests.fixtures.fakehub import FakeHub
from tests.fixtures.sidecar import SidecarProcess
from tests.fixtures.stmodels import make_st_model, st_encode

TEXTS = [
    "PostgreSQL stores each embedding beside the row it describes.",
    "Le chat dort sur le canapé.",
    "数据库中的向量搜索",
    "x",
    "a text that runs well past the model's max tokens " * 40,
]

# (architecture, options, where it is added from)
CASES = [
    ("bert", {"pooling": "mean", "prompts": {"query": "query: ", "passage": "passage: "}}, "dir"),
    ("roberta", {"pooling": "cls"}, "hub"),
    ("xlm-roberta", {"pooling": "mean", "dense_out": 16}, "hub"),
    ("mpnet", {"pooling": "cls", "dense_out": 12, "dense_activation": "identity"}, "dir"),
    ("distilbert", {"pooling": "mean"}, "dir"),
]


@pytest.fixture
def add_and_register(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    conn: psycopg.Connection,
    sidecar: SidecarProcess,
    fake_hub: FakeHub,
) -> Iterator[object]:
    """``add(folder, uri, via)``: add the model (from the folder, or from the FakeHub that
    serves it), deploy it into a store of this test's and register it with SQL; unregistered
    afterwards."""
    monkeypatch.setenv("ADDED_MODELS_CATALOG", str(tmp_path / "added.json"))
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.endpoint)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    catalog_module.catalog.cache_clear()
    store = ModelStore(tmp_path / "store")
    registered: list[str] = []

    def add(folder: Path, uri: str, via: str) -> None:
        source = str(folder)
        if via == "hub":
            fake_hub.add_repo(f"acme/{folder.name}", folder)
            source = f"hf:acme/{folder.name}"
        inspection = inspect_source(source)
        assert inspection.ok, inspection.refusals
        catalog_module.add_entry(inspection.entry(uri))
        stored = deploy(uri, store=store, cache_dir=tmp_path / "hf-cache").stored
        assert stored.manifest["quality"]["parity"]["passed"]
        assert stored.manifest["source"]["kind"] == ("hub" if via == "hub" else "local")
        conn.execute("SELECT azure_local_ai.model_register(%s, %s)", [uri, str(stored.path)])
        registered.append(uri)

    yield add
    for uri in registered:
        sidecar.client.unregister(uri)
    catalog_module.catalog.cache_clear()


def _sql_vectors(conn: psycopg.Connection, function: str, uri: str) -> np.ndarray:
    rows = [
        conn.execute(f"SELECT azure_local_ai.{function}(%s, %s)", [uri, text]).fetchone()[0]
        for text in TEXTS
    ]
    return np.asarray(rows, dtype=np.float32)


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min())


@pytest.mark.parametrize(("arch", "options", "via"), CASES, ids=[c[0] for c in CASES])
def test_sql_create_embeddings_of_an_added_model_equals_sentence_transformers(
    add_and_register: object,
    conn: psycopg.Connection,
    tmp_path: Path,
    arch: str,
    options: dict,
    via: str,
) -> None:
    folder = make_st_model(tmp_path / f"{arch}-model", arch, **options)
    uri = f"added-{arch}:v1"
    add_and_register(folder, uri, via)  # type: ignore[operator]
    ours = _sql_vectors(conn, "create_embeddings", uri)
    assert ours.shape == (len(TEXTS), options.get("dense_out") or 32)
    assert _min_cosine(ours, st_encode(folder, TEXTS)) >= 0.9999
    (metadata,) = conn.execute("SELECT azure_local_ai.model_metadata(%s)", [uri]).fetchone()
    assert metadata["dimensions"] == ours.shape[1]
    assert metadata["pooling"] == options["pooling"]
    assert metadata["license"]["name"] == "apache-2.0"
    if "prompts" in options:
        queried = _sql_vectors(conn, "embed_query", uri)
        assert _min_cosine(queried, st_encode(folder, TEXTS, prompt_name="query")) >= 0.9999
        assert _min_cosine(queried, ours) < 0.9999  # the prompt made a difference
    # The array overload, batched by the module, gives the same vectors in input order.
    rows = conn.execute(
        "SELECT embedding FROM azure_local_ai.create_embeddings(%s, %s::text[], batch_size => 2)",
        [uri, TEXTS],
    ).fetchall()
    assert np.allclose(np.asarray([r[0] for r in rows], dtype=np.float32), ours, atol=1e-6)
