"""An optional int8 variant of a model, admitted only through a measured quality gate.

``quantize_int8`` makes the variant with ONNX Runtime's dynamic quantisation, in the weight
format native to the deploying CPU (``cpu.int8_format``: "s8" with VNNI or AMX, else "u8");
``quality_gate`` embeds the probe set (``probes.json``: ~400 hand-written texts in a dozen
languages and scripts, from two-word queries to passages past the encoders' 256-token limit)
with the fp32 and int8 graphs and measures

* ``mean_cos`` and ``min_cos``: the mean and lowest cosine between each text's fp32 and int8
  embeddings;
* ``top10_agreement``: with each probe as a query against the other probes, the overlap of its
  10 nearest neighbours under fp32 and under int8, averaged over the probes, with its standard
  error and a 95% interval (mean ± 1.96 standard errors) so that a verdict near a threshold
  reads as such.

The figures go into the manifest's ``quality.int8`` whether the gate passes or not, with the
weight format, the probe set's version and sha256, and the deploying CPU (model and the flags
that decide the format); the int8 file is kept only when both means reach the catalog's
thresholds. ``build_int8`` does not leave a verdict inside its own margin of error: while the
95% interval of top-10 agreement reaches below the threshold, it keeps the matrix product whose
input has the widest outliers in fp32 and measures again (``outlier_ranking``, at most
``MAX_KEPT_SHARE`` of them), and the manifest names those kept.

A variant is measured on the CPU that made it. Served on a CPU whose native format differs (s8
weights and no VNNI: ONNX Runtime then multiplies through ``vpmaddubsw``, which can saturate),
its figures no longer hold, so ``check_int8_for_cpu`` runs the gate again there before the
sidecar serves it, and remembers the verdict per int8 file and CPU in a file of the sidecar's
state (never in the store, whose manifest is hash-verified).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from inference.cpu import INT8_FORMATS, CpuFeatures, Int8Format
from inference.modelconfig import ModelConfig
from inference.statefile import write_json_atomic

PROBES_PATH = Path(__file__).with_name("probes.json")
TOP_K = 10
QUANTISED_OPS = ("MatMul", "Attention")
# Matrix products kept in fp32 to bring the gate's interval above its threshold: at most this
# share of them (each costs some of int8's speed), chosen by their inputs' outliers.
MAX_KEPT_SHARE = 0.125
# Probes whose activations rank the matrix products (every n-th of the set: all its lengths).
RANKING_PROBES = 100
# What a manifest without a recorded format holds: the only recipe before formats were chosen.
LEGACY_FORMAT: Int8Format = "u8"

log = logging.getLogger("inference.quantize")


@dataclass(frozen=True)
class ProbeSet:
    texts: tuple[str, ...]
    version: int
    sha256: str  # of the texts (canonical JSON), not of the file's layout

    def to_manifest(self) -> dict[str, Any]:
        return {"version": self.version, "sha256": self.sha256}


@cache
def probe_set() -> ProbeSet:
    data = json.loads(PROBES_PATH.read_text(encoding="utf-8"))
    texts = tuple(data["texts"])
    canonical = json.dumps(texts, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return ProbeSet(texts, int(data.get("version", 1)), hashlib.sha256(canonical).hexdigest())


def probe_texts() -> tuple[str, ...]:
    return probe_set().texts


def quantize_int8(
    fp32_path: Path, int8_path: Path, fmt: Int8Format, keep_fp32: Sequence[str] = ()
) -> None:
    """Write the dynamically quantised int8 form of ``fp32_path`` to ``int8_path``, with weights
    in ``fmt``: "s8" (signed int8) or "u8" (unsigned int8), per output channel, all 8 bits.
    Only the matrix products are quantised, less the nodes named in ``keep_fp32``; the
    embedding tables stay fp32 (a lookup gains nothing from int8, and quantising them per
    tensor cost top-10 agreement: 0.9007 against 0.9052 for all-MiniLM-L6-v2 on a VNNI Xeon,
    at the same speed).

    Activations are quantised to uint8 at run time (dynamic quantisation), so the weights'
    type decides the kernel. With signed int8 weights ONNX Runtime multiplies u8 x s8, which
    on x86-64 CPUs with AVX2 or AVX-512 but without VNNI goes through ``vpmaddubsw``: it adds
    pairs of products into int16 and can saturate. ONNX Runtime's quantisation guide
    (https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html, sections
    "Data type selection" and "When to use reduce-range and per-channel quantization") names
    two ways out: 7-bit weights (``reduce_range``) or the U8U8 format, which has no such
    saturation. Measured on all-MiniLM-L6-v2 with the first probe set: s8 per-channel
    weights reduced to 7 bits gave a mean cosine of 0.9898 (below the gate), u8 per-channel
    weights with all 8 bits 0.9915 and top-10 agreement 0.91, per-tensor weights far less.
    Hence, without VNNI, u8 weights ("u8"), per output channel, no range reduction.

    With VNNI (AVX-512 VNNI, AVX-VNNI) or AMX, u8 x s8 goes through ``vpdpbusd`` (or AMX
    tiles), which accumulates four products straight into int32 without int16 saturation, and
    s8 weights are the form those instructions take; u8 x u8 has no such instruction and runs
    on the widening AVX2 path. On a 16-core Xeon with AVX-512 VNNI and AMX, s8 per-channel
    weights embedded short texts 1.44x as fast as fp32, u8 weights about 1.0x: there int8
    pays only as s8 ("s8"). ``cpu.int8_format`` picks the format from the deploying CPU's flags.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if fmt not in INT8_FORMATS:
        raise ValueError(f"int8 format must be one of {', '.join(INT8_FORMATS)}, got {fmt!r}")
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
            weight_type=QuantType.QInt8 if fmt == "s8" else QuantType.QUInt8,
            per_channel=True,
            reduce_range=False,
            op_types_to_quantize=list(QUANTISED_OPS),
            nodes_to_exclude=list(keep_fp32),
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
class Agreement:
    """The gate's figures for two embeddings of the same probes, before any verdict."""

    mean_cos: float
    min_cos: float
    top10_agreement: float
    top10_agreement_stderr: float
    probes: int


@dataclass(frozen=True)
class QualityReport:
    mean_cos: float
    min_cos: float
    top10_agreement: float
    # The per-probe overlaps' standard error; probes share neighbours, so it is a guide to how
    # far another probe set could move the figure, not an exact bound.
    top10_agreement_stderr: float
    top10_agreement_ci95: tuple[float, float]
    passed: bool
    thresholds: Mapping[str, float]
    probes: int
    probe_set: Mapping[str, Any]  # {"version", "sha256"}
    format: str  # "s8" | "u8"
    cpu: Mapping[str, Any]  # {"model", "flags"}: where it was quantised and measured
    # The matrix products left in fp32 (``build_int8``), of ``matmuls`` with weights in all.
    kept_fp32: tuple[str, ...] = ()
    matmuls: int = 0

    def to_manifest(self) -> dict[str, Any]:
        data = asdict(self)
        data["kept_fp32"] = list(self.kept_fp32)
        data["thresholds"] = dict(self.thresholds)
        data["top10_agreement_ci95"] = list(self.top10_agreement_ci95)
        data["probe_set"] = dict(self.probe_set)
        data["cpu"] = {"model": self.cpu["model"], "flags": list(self.cpu["flags"])}
        return data

    @classmethod
    def from_manifest(cls, data: Mapping[str, Any]) -> QualityReport:
        return cls(
            mean_cos=float(data["mean_cos"]),
            min_cos=float(data["min_cos"]),
            top10_agreement=float(data["top10_agreement"]),
            top10_agreement_stderr=float(data["top10_agreement_stderr"]),
            top10_agreement_ci95=(
                float(data["top10_agreement_ci95"][0]),
                float(data["top10_agreement_ci95"][1]),
            ),
            passed=bool(data["passed"]),
            thresholds=dict(data["thresholds"]),
            probes=int(data["probes"]),
            probe_set=dict(data["probe_set"]),
            format=str(data["format"]),
            cpu={"model": data["cpu"]["model"], "flags": list(data["cpu"]["flags"])},
            kept_fp32=tuple(str(name) for name in data.get("kept_fp32") or ()),
            matmuls=int(data.get("matmuls") or 0),
        )

    @property
    def clear(self) -> bool:
        """Passed with room: the 95% interval of top-10 agreement lies above its threshold
        too, so another probe set or machine of the kind would not likely turn the verdict."""
        return self.passed and self.top10_agreement_ci95[0] >= self.thresholds["top10_agreement"]

    def figures(self) -> str:
        low, high = self.top10_agreement_ci95
        return (
            f"mean cosine {self.mean_cos:.4f} (needs {self.thresholds['mean_cos']}), top-{TOP_K} "
            f"agreement {self.top10_agreement:.3f} (95% interval {low:.3f}-{high:.3f}; needs "
            f"{self.thresholds['top10_agreement']}) on {self.probes} probes"
        )

    def summary(self) -> str:
        outcome = "passed" if self.passed else "failed"
        kept = (
            f", {len(self.kept_fp32)} of {self.matmuls} matrix products kept in fp32"
            if self.kept_fp32
            else ""
        )
        return (
            f"int8 quality gate {outcome} ({self.format} weights on {self.cpu['model']}{kept}): "
            f"{self.figures()}"
        )


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _neighbours(vectors: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's ``k`` most similar other rows (by cosine)."""
    unit = _unit(vectors)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def compare(fp32: np.ndarray, int8: np.ndarray) -> Agreement:
    """The gate's figures for two embeddings of the same probes (rows aligned)."""
    cosines = np.sum(_unit(fp32) * _unit(int8), axis=1)
    k = min(TOP_K, len(fp32) - 1)
    a, b = _neighbours(fp32, k), _neighbours(int8, k)
    overlap = np.array(
        [len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist(), strict=True)]
    )
    stderr = float(np.std(overlap, ddof=1) / math.sqrt(len(overlap))) if len(overlap) > 1 else 0.0
    return Agreement(
        mean_cos=round(float(np.mean(cosines)), 6),
        min_cos=round(float(np.min(cosines)), 6),
        top10_agreement=round(float(np.mean(overlap)), 6),
        top10_agreement_stderr=round(stderr, 6),
        probes=len(fp32),
    )


def verdict(
    figures: Agreement,
    thresholds: Mapping[str, float],
    fmt: Int8Format,
    cpu: CpuFeatures,
    probes: ProbeSet,
    kept_fp32: Sequence[str] = (),
    matmuls: int = 0,
) -> QualityReport:
    """The report of ``figures`` against the catalog's ``thresholds`` (both means must reach
    theirs), for int8 weights in ``fmt`` measured on ``cpu`` with ``probes``."""
    agreement, half = figures.top10_agreement, 1.96 * figures.top10_agreement_stderr
    return QualityReport(
        mean_cos=figures.mean_cos,
        min_cos=figures.min_cos,
        top10_agreement=agreement,
        top10_agreement_stderr=figures.top10_agreement_stderr,
        top10_agreement_ci95=(
            round(max(0.0, agreement - half), 6),
            round(min(1.0, agreement + half), 6),
        ),
        passed=figures.mean_cos >= thresholds["mean_cos"]
        and agreement >= thresholds["top10_agreement"],
        thresholds=dict(thresholds),
        probes=figures.probes,
        probe_set=probes.to_manifest(),
        format=fmt,
        cpu=cpu.to_manifest(),
        kept_fp32=tuple(kept_fp32),
        matmuls=matmuls,
    )


def quality_gate(
    fp32_path: Path,
    int8_path: Path,
    tokenizer_dir: Path,
    config: ModelConfig,
    thresholds: Mapping[str, float],
    fmt: Int8Format,
    cpu: CpuFeatures,
    kept_fp32: Sequence[str] = (),
    matmuls: int = 0,
) -> QualityReport:
    """Embed the probes with both graphs (through the engine) on this machine and compare them;
    ``fmt`` is the int8 graph's weight format and ``cpu`` the CPU it is measured on
    (``kept_fp32`` and ``matmuls`` only go into the report)."""
    probes = probe_set()
    fp32, int8 = (_embed_probes(path, tokenizer_dir, config) for path in (fp32_path, int8_path))
    return verdict(compare(fp32, int8), thresholds, fmt, cpu, probes, kept_fp32, matmuls)


def _embed_probes(onnx_path: Path, tokenizer_dir: Path, config: ModelConfig) -> np.ndarray:
    """The probe set's vectors from one graph, through the engine."""
    from inference.engine import EmbeddingModel

    model = EmbeddingModel(onnx_path, tokenizer_dir, config, {})
    return model.embed(list(probe_set().texts)).vectors


def _weighted_matmuls(model: Any) -> list[tuple[str, str]]:
    """(name, activation input) of the graph's matrix products by a weight: those dynamic
    quantisation turns into int8 products (named ones: only those can be kept in fp32)."""
    weights = {t.name for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or not node.name:
            continue
        activations = [name for name in node.input if name not in weights]
        if len(activations) == 1 and len(node.input) == 2:
            found.append((node.name, activations[0]))
    return found


def outlier_ranking(fp32_path: Path, tokenizer_dir: Path, config: ModelConfig) -> list[str]:
    """The graph's matrix products by a weight, the one whose input has the widest outliers
    first: by the mean over probes of the input's range over its standard deviation.

    Dynamic quantisation gives each product's input one uint8 scale per run, stretched to
    its range: where a few values are far out (the feed-forward down-projection after GELU
    is the usual case), most values fall into few steps. On all-MiniLM-L6-v2 the first
    layers' down-projections lead both this ranking and the measured cost of quantising
    each product alone (1 - mean cosine 0.0019 for the first layer's, against 0.00001 for a
    query projection)."""
    import onnx
    import onnxruntime as ort

    from inference.engine import EmbeddingModel

    model = onnx.load(str(fp32_path))
    nodes = _weighted_matmuls(model)
    outputs = {o.name for o in model.graph.output}
    for _, activation in nodes:
        if activation not in outputs:
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(activation, onnx.TensorProto.FLOAT, None)
            )
            outputs.add(activation)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    engine = EmbeddingModel(fp32_path, tokenizer_dir, config, {})
    texts = probe_texts()
    texts = texts[:: max(1, len(texts) // RANKING_PROBES)]
    tokenized = engine.tokenize(list(texts))
    names = [activation for _, activation in nodes]
    spread = np.zeros(len(nodes))
    for row, length in zip(tokenized.ids, tokenized.lengths, strict=True):
        feed, _ = engine.feed([row], np.array([length]))  # one text: no padding in the figures
        for index, value in enumerate(session.run(names, feed)):
            std = float(np.std(value))
            spread[index] += float(np.ptp(value)) / std if std > 0 else 0.0
    order = np.argsort(-spread, kind="stable")
    return [nodes[i][0] for i in order]


def build_int8(
    fp32_path: Path,
    int8_path: Path,
    tokenizer_dir: Path,
    config: ModelConfig,
    thresholds: Mapping[str, float],
    fmt: Int8Format,
    cpu: CpuFeatures,
    log: Callable[[str], None] | None = None,
) -> QualityReport:
    """Quantise ``fp32_path`` to ``int8_path`` in ``fmt`` and measure it with the gate; while
    its verdict is not ``clear`` (failed, or passed inside its own margin of error), keep
    the next matrix product of ``outlier_ranking`` in fp32 and measure again, up to
    ``MAX_KEPT_SHARE`` of them. Returns the last report; ``int8_path`` holds its variant.

    On all-MiniLM-L6-v2 with s8 weights on a 2-core Xeon with AVX-512 VNNI: every product in
    int8, top-10 agreement 0.905 (95% interval 0.898-0.912: passed, not clear), 1.91x fp32;
    with the ranking's first, layer 1's down-projection, kept in fp32, 0.912 (0.905-0.919),
    1.80x fp32, in 11 s in all. (Kept by hand: layer 0's, 0.917 and 1.88x; the first three
    layers', 0.926 and 1.71x.)"""
    import onnx

    say = log or (lambda _line: None)
    probes = probe_set()
    reference = _embed_probes(fp32_path, tokenizer_dir, config)
    matmuls = len(_weighted_matmuls(onnx.load(str(fp32_path), load_external_data=False)))
    limit = max(1, int(matmuls * MAX_KEPT_SHARE)) if matmuls else 0
    kept: list[str] = []
    ranking: list[str] = []
    while True:
        quantize_int8(fp32_path, int8_path, fmt, kept)
        figures = compare(reference, _embed_probes(int8_path, tokenizer_dir, config))
        report = verdict(figures, thresholds, fmt, cpu, probes, kept, matmuls)
        if report.clear or len(kept) >= limit:
            return report
        if not ranking:
            ranking = outlier_ranking(fp32_path, tokenizer_dir, config)[:limit]
        if len(kept) >= len(ranking):
            return report
        kept.append(ranking[len(kept)])
        say(
            f"int8 not clear of its gate ({report.figures()}): keeping {kept[-1]} in fp32, "
            f"{len(kept)} of at most {limit}"
        )


# -- checked again where it is served --------------------------------------------------------


def recorded_format(quality: Mapping[str, Any]) -> Int8Format:
    """The weight format a manifest's ``quality.int8`` records (u8 when it predates formats)."""
    fmt = quality.get("format")
    return "s8" if fmt == "s8" else "u8" if fmt == "u8" else LEGACY_FORMAT


def made_for(quality: Mapping[str, Any], cpu: CpuFeatures) -> bool:
    """Whether the int8 variant ``quality`` describes is in ``cpu``'s native format, so that
    its recorded figures hold there."""
    return recorded_format(quality) == cpu.int8_format


def _made_on(quality: Mapping[str, Any]) -> str:
    made = quality.get("cpu")
    if not isinstance(made, Mapping):
        return "a CPU it did not record"
    flags = ", ".join(made.get("flags") or []) or "none of the int8-relevant flags"
    return f"{made.get('model', 'an unnamed CPU')} ({flags})"


@dataclass(frozen=True)
class LoadCheck:
    """The quality gate run again on this CPU, for an int8 variant made in another format."""

    report: QualityReport
    made_as: str  # the variant's weight format
    made_on: str  # the CPU that made and first measured it, for people
    here: str  # this CPU, for people
    cached: bool  # the verdict of an earlier load on this CPU
    seconds: float  # what the gate took when it ran

    def summary(self) -> str:
        when = "remembered from an earlier load" if self.cached else f"ran in {self.seconds:.1f} s"
        return (
            f"int8 variant made as {self.made_as} weights on {self.made_on}, checked again on "
            f"{self.here} ({when}): {self.report.figures()}"
        )


class Int8NotAdmittedHere(RuntimeError):
    """An int8 variant that may not be served on this CPU (``check``: the gate it failed here,
    if it ran); the message says what to do."""

    def __init__(self, message: str, check: LoadCheck | None = None) -> None:
        super().__init__(message)
        self.check = check


_FIX = (
    "load the model in fp32, or deploy it again with precision int8 on this machine, which "
    "rebuilds the int8 variant in this CPU's format"
)


def _failed(check: LoadCheck) -> Int8NotAdmittedHere:
    return Int8NotAdmittedHere(
        f"its int8 variant was made as {check.made_as} weights on {check.made_on}, and on this "
        f"CPU, {check.here}, it fails its quality gate: {check.report.figures()}; " + _FIX,
        check,
    )


_CACHE_FORMAT = 1
_cache_lock = threading.Lock()


def _read_cache(path: Path) -> dict[str, Any]:
    """The checks remembered in ``path``; a missing or damaged file remembers none (it is only
    a cache: the gate runs again and the file is rewritten)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    checks = data.get("checks") if isinstance(data, dict) else None
    return checks if isinstance(checks, dict) and data.get("format") == _CACHE_FORMAT else {}


def _remembered(
    entry: Any, probes: ProbeSet, thresholds: Mapping[str, float]
) -> QualityReport | None:
    """The cached report if it was measured with these probes against these thresholds."""
    try:
        report = QualityReport.from_manifest(entry["report"])
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    if dict(report.probe_set) != probes.to_manifest() or dict(report.thresholds) != thresholds:
        return None
    return report


def check_int8_for_cpu(
    model_dir: Path, manifest: Mapping[str, Any], cpu: CpuFeatures, cache_path: Path
) -> LoadCheck | None:
    """Before a model-store directory's int8 variant is served on ``cpu``: None when the
    variant is in ``cpu``'s native format (its recorded figures hold); otherwise the gate on
    the store's fp32 and int8 files, run here once per int8 file (by sha256) and CPU and
    remembered in ``cache_path``. Raises Int8NotAdmittedHere when it fails.

    The caller has verified the files against the manifest, so its sha256 names the file."""
    quality = (manifest.get("quality") or {}).get("int8") or {}
    if made_for(quality, cpu):
        return None
    fmt = recorded_format(quality)
    if manifest.get("kind") == "reranker":
        # The rerank gate is run where the variant is made, not again at load.
        raise Int8NotAdmittedHere(
            f"its int8 variant was made as {fmt} weights on {_made_on(quality)}, not in this "
            f"CPU's format ({cpu.describe()}), where its rankings were never measured; " + _FIX
        )
    thresholds = quality.get("thresholds")
    if not isinstance(thresholds, Mapping):
        raise Int8NotAdmittedHere(
            f"its int8 variant was made as {fmt} weights, not this CPU's format "
            f"({cpu.describe()}), and its manifest records no quality thresholds to check it "
            "against here; " + _FIX
        )
    thresholds = {key: float(value) for key, value in thresholds.items()}
    onnx_files = manifest["onnx"]
    fp32, int8 = model_dir / onnx_files["fp32"], model_dir / onnx_files["int8"]
    sha256 = (manifest.get("files") or {}).get(onnx_files["int8"])
    if not sha256:
        from inference.store import sha256_file

        sha256 = sha256_file(int8)
    key = f"{sha256} {cpu.signature()}"
    probes = probe_set()
    made_on, here = _made_on(quality), cpu.describe()
    with _cache_lock:
        remembered = _remembered(_read_cache(cache_path).get(key), probes, thresholds)
    if remembered is not None:
        check = LoadCheck(remembered, fmt, made_on, here, cached=True, seconds=0.0)
    else:
        started, clock = datetime.now(UTC), time.perf_counter()
        report = quality_gate(
            fp32,
            int8,
            model_dir / str(manifest.get("tokenizer") or "."),
            ModelConfig.from_manifest(manifest),
            thresholds,
            fmt,
            cpu,
            tuple(quality.get("kept_fp32") or ()),
            int(quality.get("matmuls") or 0),
        )
        seconds = time.perf_counter() - clock
        check = LoadCheck(report, fmt, made_on, here, cached=False, seconds=seconds)
        with _cache_lock:
            checks = _read_cache(cache_path)
            checks[key] = {
                "model": manifest.get("uri"),
                "int8_sha256": sha256,
                "cpu": cpu.signature(),
                "checked_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "seconds": round(seconds, 2),
                "report": report.to_manifest(),
            }
            write_json_atomic(cache_path, {"format": _CACHE_FORMAT, "checks": checks})
    if not check.report.passed:
        raise _failed(check)
    return check
