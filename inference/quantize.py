"""An optional int8 variant of a model, admitted only through a measured quality gate.

``quantize_int8`` makes the variant with ONNX Runtime's dynamic quantisation; ``quality_gate``
embeds the probe set (``probes.json``: ~100 varied texts) with the fp32 and int8 graphs and
measures

* ``mean_cos``: the mean cosine between each text's fp32 and int8 embeddings;
* ``top10_agreement``: with each probe as a query against the other probes, the overlap of its
  10 nearest neighbours under fp32 and under int8, averaged over the probes.

The figures go into the manifest's ``quality.int8`` whether the gate passes or not; the int8
file is kept only when both figures reach the catalog's thresholds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from inference.modelconfig import ModelConfig

PROBES_PATH = Path(__file__).with_name("probes.json")
TOP_K = 10


@cache
def probe_texts() -> tuple[str, ...]:
    return tuple(json.loads(PROBES_PATH.read_text(encoding="utf-8"))["texts"])


def quantize_int8(fp32_path: Path, int8_path: Path) -> None:
    """Write the dynamically quantised int8 form of ``fp32_path`` to ``int8_path``.

    Activations are quantised to uint8 at run time (dynamic quantisation). With signed int8
    weights ONNX Runtime multiplies u8 x s8, which on x86-64 CPUs with AVX2 or AVX-512 but
    without VNNI goes through ``vpmaddubsw``: it adds pairs of products into int16 and can
    saturate. ONNX Runtime's quantisation guide
    (https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html, sections
    "Data type selection" and "When to use reduce-range and per-channel quantization") names
    two ways out: 7-bit weights (``reduce_range``) or the U8U8 format, which has no such
    saturation. The store's files may be served on any x86-64 machine, so the variant must
    be right without VNNI. Measured on all-MiniLM-L6-v2 with the probe set: s8 per-channel
    weights reduced to 7 bits gave a mean cosine of 0.9898 (below the gate), u8 per-channel
    weights with all 8 bits 0.9915 and top-10 agreement 0.91, per-tensor weights far less.
    Hence u8 weights, per output channel, no range reduction.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8_path.parent.mkdir(parents=True, exist_ok=True)
    # The quantiser writes a shape-inferred copy of the graph beside it and leaves it there when
    # it fails (a full disk truncates it): in a staging directory it would reach the store.
    inferred = fp32_path.with_name(f"{fp32_path.stem}-inferred{fp32_path.suffix}")
    root = logging.getLogger()
    root.addFilter(_drop_preprocessing_hint)
    try:
        quantize_dynamic(
            str(fp32_path),
            str(int8_path),
            weight_type=QuantType.QUInt8,
            per_channel=True,
            reduce_range=False,
            # Graphs fused by ONNX Runtime's optimiser hold com.microsoft operators whose
            # outputs ONNX shape inference cannot type; all of them are float tensors.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.removeFilter(_drop_preprocessing_hint)
        inferred.unlink(missing_ok=True)


def _drop_preprocessing_hint(record: logging.LogRecord) -> bool:
    # The quantiser advises shape-inference pre-processing on the root logger every time; the
    # graphs here are complete exports and the quality gate measures the result anyway.
    return "pre-processing before quantization" not in record.getMessage()


@dataclass(frozen=True)
class QualityReport:
    mean_cos: float
    min_cos: float
    top10_agreement: float
    passed: bool
    thresholds: Mapping[str, float]
    probes: int

    def to_manifest(self) -> dict[str, Any]:
        data = asdict(self)
        data["thresholds"] = dict(self.thresholds)
        return data

    def summary(self) -> str:
        verdict = "passed" if self.passed else "failed"
        return (
            f"int8 quality gate {verdict}: mean cosine {self.mean_cos:.4f} "
            f"(needs {self.thresholds['mean_cos']}), top-{TOP_K} agreement "
            f"{self.top10_agreement:.3f} (needs {self.thresholds['top10_agreement']}) "
            f"on {self.probes} probes"
        )


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _neighbours(vectors: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's ``k`` most similar other rows (by cosine)."""
    unit = _unit(vectors)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def compare(fp32: np.ndarray, int8: np.ndarray, thresholds: Mapping[str, float]) -> QualityReport:
    """The gate's figures for two embeddings of the same probes (rows aligned)."""
    cosines = np.sum(_unit(fp32) * _unit(int8), axis=1)
    k = min(TOP_K, len(fp32) - 1)
    a, b = _neighbours(fp32, k), _neighbours(int8, k)
    overlap = [len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist(), strict=True)]
    mean_cos = float(np.mean(cosines))
    agreement = float(np.mean(overlap))
    return QualityReport(
        mean_cos=round(mean_cos, 6),
        min_cos=round(float(np.min(cosines)), 6),
        top10_agreement=round(agreement, 6),
        passed=mean_cos >= thresholds["mean_cos"] and agreement >= thresholds["top10_agreement"],
        thresholds=dict(thresholds),
        probes=len(fp32),
    )


def quality_gate(
    fp32_path: Path,
    int8_path: Path,
    tokenizer_dir: Path,
    config: ModelConfig,
    thresholds: Mapping[str, float],
) -> QualityReport:
    """Embed the probes with both graphs (through the engine) and compare them."""
    from inference.engine import EmbeddingModel

    texts = list(probe_texts())
    vectors = [
        EmbeddingModel(path, tokenizer_dir, config, {}).embed(texts).vectors
        for path in (fp32_path, int8_path)
    ]
    return compare(vectors[0], vectors[1], thresholds)
