"""all-MiniLM-L6-v2 exported from its package: the engine against sentence-transformers."""

from __future__ import annotations

import numpy as np
import pytest

from inference import quantize
from inference.cpu import read_cpu
from inference.engine import EmbeddingModel
from inference.store import StoredModel
from tests.fixtures.realmodel import minilm_package_dir, minilm_stored_model  # noqa: F401

pytestmark = pytest.mark.realmodel

TEXTS = [
    "hello",
    "A man is eating food.",
    "PostgreSQL can store embeddings in a vector column and search them with an HNSW index.",
    "word " * 700,  # far past 512 tokens: both sides cut it at the model's 256
    "北京是中国的首都，也是一座历史悠久的城市。",  # noqa: RUF001 (Chinese punctuation, on purpose)
    "القاهرة هي عاصمة مصر وأكبر مدنها.",
    "Москва — столица России.",
    "दिल्ली भारत की राजधानी है।",
    "I love this! 😍🎉🚀",
    "   \t\n  ",
    "",
    "?!...,;:-()[]{}",
    "MiXeD CaSe and numbers 12345 and ünïcödé",
]


@pytest.fixture(scope="module")
def reference_vectors() -> np.ndarray:
    st = pytest.importorskip("sentence_transformers", reason="needs the 'reference' extra")
    model = st.SentenceTransformer(str(minilm_package_dir()), device="cpu")
    return model.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=True, batch_size=8)


def test_export_was_checked_against_pytorch(minilm_stored_model: StoredModel) -> None:  # noqa: F811
    manifest = minilm_stored_model.manifest
    assert manifest["source"]["kind"] == "package"
    assert manifest["preparation"]["exported"] is True
    assert manifest["preparation"]["export_max_abs_diff"] <= 1e-4
    assert minilm_stored_model.verify() == []


def test_engine_matches_sentence_transformers_on_varied_texts(
    minilm_stored_model: StoredModel,  # noqa: F811
    reference_vectors: np.ndarray,
) -> None:
    engine = EmbeddingModel.from_stored(minilm_stored_model, {})
    vectors = engine.embed(TEXTS).vectors
    assert vectors.shape == (len(TEXTS), 384)
    cosines = np.sum(vectors * reference_vectors, axis=1) / (
        np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference_vectors, axis=1)
    )
    worst = int(np.argmin(cosines))
    assert cosines.min() >= 0.9999, f"text {worst} ({TEXTS[worst][:30]!r}): {cosines[worst]}"


def test_int8_gate_figures_are_recorded_and_decide_admission(
    minilm_stored_model: StoredModel,  # noqa: F811
) -> None:
    quality = minilm_stored_model.manifest["quality"]["int8"]
    thresholds = quality["thresholds"]
    assert thresholds == {"mean_cos": 0.99, "top10_agreement": 0.9}
    assert quality["probes"] == len(quantize.probe_texts())
    assert quality["probe_set"] == quantize.probe_set().to_manifest()
    # Quantised for the machine that deployed it: this one.
    assert quality["format"] == read_cpu().int8_format
    assert quality["cpu"] == read_cpu().to_manifest()
    # int8 is close to fp32 even where it misses the gate; far off would mean a broken variant.
    assert 0.98 <= quality["mean_cos"] <= 1.0 and 0.8 <= quality["top10_agreement"] <= 1.0
    expected = (
        quality["mean_cos"] >= thresholds["mean_cos"]
        and quality["top10_agreement"] >= thresholds["top10_agreement"]
    )
    assert quality["passed"] is expected
    assert ("int8" in minilm_stored_model.precisions) is expected
    # Products kept in fp32 come from the head of the outlier ranking, within the cap, and
    # only while the verdict was not clear: the first layers' FFN down-projections lead it.
    fp32_path = minilm_stored_model.path / minilm_stored_model.manifest["onnx"]["fp32"]
    tokenizer = minilm_stored_model.path / str(minilm_stored_model.manifest.get("tokenizer") or ".")
    ranking = quantize.outlier_ranking(fp32_path, tokenizer, minilm_stored_model.config)
    assert len(ranking) == quality["matmuls"] == 36
    assert all("/output/dense/" in name and "attention" not in name for name in ranking[:3])
    kept = quality["kept_fp32"]
    assert kept == ranking[: len(kept)] and len(kept) <= 36 * quantize.MAX_KEPT_SHARE
    if kept:
        assert "kept in fp32" in quantize.QualityReport.from_manifest(quality).summary()
    if expected:
        int8 = EmbeddingModel.from_stored(minilm_stored_model, {}, precision="int8")
        fp32 = EmbeddingModel.from_stored(minilm_stored_model, {})
        a, b = int8.embed(TEXTS[:3]).vectors, fp32.embed(TEXTS[:3]).vectors
        assert np.all(np.sum(a * b, axis=1) >= 0.95)
