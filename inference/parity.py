"""The parity gate: before a model serves, its serving graph must compute what the original
model computes.

``check_parity`` embeds a probe set (several languages and scripts, short texts and texts past
the model's max tokens, with each of the model's prompts) twice: with the engine, on the ONNX
graph that will serve, and with the original model run by sentence-transformers on PyTorch
(the ``reference`` extra). fp32 must agree on every text to a cosine of at least
``MIN_COSINE``; the figures go into the store's manifest (``quality.parity``) and the models
page. The int8 variant keeps its own gate (``inference/quantize.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.modelconfig import ModelConfig

Log = Callable[[str], None]

MIN_COSINE = 0.9999

# Short texts in several languages and scripts, special characters, and an empty one.
_SHORT = (
    "How do I create an index on a vector column in PostgreSQL?",
    "The quick brown fox jumps over the lazy dog.",
    "Wie viele Einwohner hat Berlin?",
    "Le chat dort sur le canapé depuis ce matin.",
    "¿Dónde está la biblioteca más cercana?",
    "数据库中的向量搜索",
    "東京タワーの高さはどれくらいですか",
    "Москва — столица России.",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "SELECT id FROM docs ORDER BY embedding <=> $1 LIMIT 10;",
    "x",
    "",
)
# Long texts: each is cut at the model's max tokens, on both sides.
_LONG = (
    "PostgreSQL stores each embedding beside the row it describes, and an index over the "
    "vectors answers nearest-neighbour queries in milliseconds. " * 60,
    "Die Datenbank speichert jeden Vektor neben der Zeile, die er beschreibt. " * 80,
    "向量数据库把每个嵌入和它描述的行存放在一起。" * 120,
)
PROBE_TEXTS = (*_SHORT, *_LONG)


class ParityError(RuntimeError):
    """The gate cannot run (the reference extra is missing, or the original does not load)."""


@dataclass(frozen=True)
class ParityResult:
    passed: bool
    min_cosine: float
    mean_cosine: float
    max_abs_diff: float
    texts: int
    input_types: tuple[str, ...]
    worst_text: str
    seconds: float
    reference: str  # what ran the original

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"parity gate {verdict}: min cosine {self.min_cosine:.6f} (needs {MIN_COSINE}), "
            f"mean {self.mean_cosine:.6f}, largest difference {self.max_abs_diff:.1e} over "
            f"{self.texts} embeddings against {self.reference} ({self.seconds:.1f} s)"
        )

    def to_manifest(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "min_cosine": self.min_cosine,
            "mean_cosine": self.mean_cosine,
            "max_abs_diff": self.max_abs_diff,
            "threshold": MIN_COSINE,
            "texts": self.texts,
            "input_types": list(self.input_types),
            "worst_text": self.worst_text[:80],
            "seconds": round(self.seconds, 2),
            "reference": self.reference,
        }


def reference_available() -> bool:
    """Whether sentence-transformers (and PyTorch) can be imported here."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "sentence_transformers"))


def reference_model(model_dir: Path, cls: str = "SentenceTransformer") -> tuple[Any, str]:
    """The original model in ``model_dir``, loaded by sentence-transformers' ``cls``
    (SentenceTransformer, or CrossEncoder for a reranker) on PyTorch's CPU, in eval mode, never
    running a repository's code, and the label of the versions that ran it."""
    try:
        import sentence_transformers
        import torch
    except ImportError:
        raise ParityError(
            "the parity gate runs the original model with sentence-transformers on PyTorch, "
            "which are not installed: install the 'reference' extra (pip install "
            "'.[reference]') on the worker and deploy again"
        ) from None
    try:
        model = getattr(sentence_transformers, cls)(
            str(model_dir), device="cpu", local_files_only=True, trust_remote_code=False
        )
    except Exception as exc:  # any failure to load the original stops the gate the same way
        raise ParityError(
            f"sentence-transformers cannot load the original model from {model_dir}: {exc}"
        ) from None
    model.eval()
    label = (
        f"sentence-transformers {sentence_transformers.__version__} / PyTorch {torch.__version__}"
    )
    return model, label


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.sum(a.astype(np.float64) * b.astype(np.float64), axis=1)
    return dots / np.maximum(norms, 1e-12)


def check_parity(
    model_dir: Path,
    onnx_path: Path,
    config: ModelConfig,
    *,
    threads: int | None = None,
    log: Log | None = None,
) -> ParityResult:
    """Compare the engine on ``onnx_path`` with the original in ``model_dir`` (its PyTorch
    weights and sentence-transformers files) on ``PROBE_TEXTS``, once per input type the model
    has a prompt for. ParityError if the original cannot be run."""
    from inference.engine import EmbeddingModel

    say = log or (lambda _line: None)
    started = time.perf_counter()
    reference, label = reference_model(model_dir)
    settings = {"engine_sessions": 1, "spin_control": False}
    if threads:
        settings["intra_op_parallelism"] = threads
    engine = EmbeddingModel(onnx_path, model_dir, config, settings)
    prompts = getattr(reference, "prompts", None) or {}
    # The model's prompts as the engine applies them (query, passage) and as
    # sentence-transformers names them; "passage" may be called "document" there.
    types: list[tuple[str | None, str | None]] = [(None, None)]
    for input_type, names in (("query", ("query",)), ("passage", ("passage", "document"))):
        name = next((n for n in names if n in prompts), None)
        if name is not None and config.prefix(input_type):
            types.append((input_type, name))
    texts = list(PROBE_TEXTS)
    ours, theirs, labels = [], [], []
    for input_type, prompt_name in types:
        ours.append(engine.embed(texts, input_type=input_type).vectors)
        kwargs: dict[str, Any] = {"prompt_name": prompt_name} if prompt_name else {"prompt": ""}
        theirs.append(
            np.asarray(
                reference.encode(texts, batch_size=8, convert_to_numpy=True, **kwargs),
                dtype=np.float32,
            )
        )
        labels += texts
    a, b = np.concatenate(ours), np.concatenate(theirs)
    if a.shape != b.shape:
        raise ParityError(
            f"the serving graph gives vectors of shape {a.shape[1:]} where the original gives "
            f"{b.shape[1:]}"
        )
    cosines = _cosines(a, b)
    worst = int(np.argmin(cosines))
    result = ParityResult(
        passed=bool(cosines.min() >= MIN_COSINE),
        min_cosine=float(cosines.min()),
        mean_cosine=float(cosines.mean()),
        max_abs_diff=float(np.abs(a - b).max()),
        texts=len(cosines),
        input_types=tuple(t or "none" for t, _ in types),
        worst_text=labels[worst],
        seconds=time.perf_counter() - started,
        reference=label,
    )
    say(result.summary())
    return result
