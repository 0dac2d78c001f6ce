"""ONNX graphs for models published without one, and an ORT-optimised fp32 graph for CPU.

``export_onnx`` traces ``transformers.AutoModel`` with PyTorch (the optional ``export``
extra) into a graph with inputs ``input_ids`` / ``attention_mask`` / ``token_type_ids``, output
``last_hidden_state`` and dynamic batch and sequence axes, and checks it against PyTorch.

``optimize_onnx`` fuses attention, LayerNorm and GELU with ONNX Runtime's transformer
optimiser and keeps the result only if its embeddings stay within ``TOLERANCE`` of the
original graph's.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from inference.config import env_int
from inference.modelconfig import read_model_config

Log = Callable[[str], None]

# Largest difference allowed between a rewritten graph and its reference, in embedding
# components (unit-length vectors) or hidden-state values.
TOLERANCE = 1e-4
OPSET = 17
# The optimised graph replaces the original only if it is at least this much faster: within
# measurement noise the original is kept (ONNX Runtime fuses it at session start anyway).
SPEEDUP_NEEDED = 1.05
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"
# A protobuf message cannot exceed 2 GiB: a model whose weights come near that keeps them in
# one external-data file beside the graph (``<graph>_data``, where ONNX Runtime finds it).
# ONNX_EXTERNAL_DATA_MB moves the line (down, to keep the weights of smaller models apart too).
EXTERNAL_DATA_MB_DEFAULT = 1536


def external_data_bytes() -> int:
    """Weights above this many bytes are exported into an external-data file."""
    return env_int("ONNX_EXTERNAL_DATA_MB", EXTERNAL_DATA_MB_DEFAULT) * 1024 * 1024


# Inputs that check a graph: several batch widths, padding, special characters, and one text
# far past every model's max tokens (the engine truncates it to max_tokens).
CHECK_TEXTS = (
    "hello world",
    "PostgreSQL stores vectors next to the rows they describe.",
    "Ein kurzer deutscher Satz über Datenbanken.",
    "数据库中的向量搜索",
    "x",
    "",
    "The quick brown fox jumps over the lazy dog. " * 80,
)


class ExportError(RuntimeError):
    """A model could not be turned into a usable ONNX graph; the message says why."""


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ExportError(
            "this model is published without an ONNX file and exporting it needs PyTorch, "
            "which is not installed: run `pip install '.[export]'` (that is, "
            "`pip install torch==2.13.0`, the CPU build is enough) and deploy again"
        ) from None
    return torch


def load_for_export(model_dir: Path, auto_class: str) -> tuple[Any, Any, list[str]]:
    """The tokenizer and the transformers model (``auto_class``, e.g. "AutoModel") in
    ``model_dir``, in eval mode, and the graph inputs its tokenizer feeds."""
    import transformers

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(model_dir), local_files_only=True
        )
        # Eager attention traces to the plain MatMul/Softmax subgraph that ONNX Runtime's
        # optimiser recognises and fuses into its Attention operator.
        model = getattr(transformers, auto_class).from_pretrained(
            str(model_dir), local_files_only=True, attn_implementation="eager"
        )
    except (OSError, ValueError) as exc:
        raise ExportError(
            f"cannot load the model in {model_dir} with transformers: {exc}"
        ) from None
    model.eval()
    return tokenizer, model, [n for n in INPUT_NAMES if n in tokenizer.model_input_names]


def trace(
    model: Any,
    output: str,
    names: list[str],
    sample: Any,
    out_path: Path,
    dynamic: dict[str, dict[int, str]],
    say: Log,
) -> None:
    """Export ``model``'s ``output`` (an attribute of its result) fed ``names`` to
    ``out_path`` with the TorchScript exporter, tracing ``sample``; weights over
    ``external_data_bytes()`` go to an external-data file."""
    torch = _torch()

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: Any) -> Any:
            return getattr(self.model(**dict(zip(names, inputs, strict=True))), output)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    before = set(out_path.parent.iterdir())
    say(f"exporting the model to ONNX with PyTorch {torch.__version__}")
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about shape-dependent Python branches in transformers' mask code;
        # the comparison with PyTorch after it, on shapes the trace never saw, is the real
        # check.
        warnings.simplefilter("ignore")
        # The TorchScript exporter (dynamo=False): the dynamo exporter needs onnxscript, which
        # the project does not ship, and this one reproduces BERT-family encoders exactly.
        torch.onnx.export(
            Graph(),
            tuple(sample[n] for n in names),
            str(out_path),
            dynamo=False,
            input_names=names,
            output_names=[output],
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
        )
    # The exporter leaves the module in training mode; dropout would spoil the comparison.
    model.eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if weights > external_data_bytes():
        external = to_external_data(out_path, before)
        size = f"{weights / 1024**2:,.0f} MB"
        say(f"the weights ({size}) are kept apart from the graph, in {external}")


def export_onnx(model_dir: Path, out_path: Path, log: Log | None = None) -> float:
    """Export the transformer in ``model_dir`` to ``out_path``; return its largest difference
    from PyTorch on ``CHECK_TEXTS`` (ExportError if above ``TOLERANCE``)."""
    torch = _torch()
    say = log or (lambda _line: None)
    tokenizer, model, names = load_for_export(model_dir, "AutoModel")
    sample = tokenizer(list(CHECK_TEXTS[:2]), padding=True, return_tensors="pt")
    dynamic = {n: {0: "batch", 1: "sequence"} for n in [*names, OUTPUT_NAME]}
    trace(model, "last_hidden_state", names, sample, out_path, dynamic, say)
    diff = _compare_with_torch(model, tokenizer, names, out_path, model_dir, torch)
    say(f"exported graph matches PyTorch within {diff:.1e}")
    if diff > TOLERANCE:
        raise ExportError(
            f"the exported graph differs from PyTorch by {diff:.2e} (more than {TOLERANCE:g}); "
            "the model cannot be served faithfully"
        )
    return diff


def external_data_path(onnx_path: Path) -> Path:
    """Where a graph of the store keeps its weights when they are kept apart from it."""
    return onnx_path.with_name(onnx_path.name + "_data")


def to_external_data(onnx_path: Path, keep: set[Path] | None = None) -> str:
    """Rewrite ``onnx_path`` with its weights in one external-data file beside it (the
    exporter of a model over 2 GiB writes one file per tensor: those go, as does every other
    new file in the folder but ``keep``'s). Returns the data file's name."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=True)
    data = external_data_path(onnx_path)
    data.unlink(missing_ok=True)
    onnx.save_model(
        model,
        str(onnx_path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )
    if keep is not None:
        for stray in set(onnx_path.parent.iterdir()) - keep - {onnx_path, data}:
            if stray.is_file():
                stray.unlink()
    return data.name


def _compare_with_torch(
    model: Any, tokenizer: Any, names: list[str], onnx_path: Path, model_dir: Path, torch: Any
) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    # Inputs are cut where the engine cuts them: the model's max tokens.
    limit = read_model_config(model_dir).max_tokens
    worst = 0.0
    # One text alone and all of them in one padded batch: shapes the trace never saw.
    for texts in ([CHECK_TEXTS[0]], list(CHECK_TEXTS)):
        enc = tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        with torch.no_grad():
            reference = model(**{n: enc[n] for n in names}).last_hidden_state.numpy()
        (got,) = session.run([OUTPUT_NAME], {n: enc[n].numpy() for n in names})
        mask = enc["attention_mask"].numpy()[..., None].astype(bool)
        worst = max(worst, float(np.abs(np.where(mask, got - reference, 0.0)).max()))
    return worst


def _architecture(model_dir: Path, architecture: dict[str, Any]) -> tuple[str, int, int]:
    config: dict[str, Any] = {}
    if (model_dir / "config.json").is_file():
        config = json.loads((model_dir / "config.json").read_text())
    heads = architecture.get("num_heads") or config.get("num_attention_heads") or 0
    hidden = architecture.get("hidden_size") or config.get("hidden_size") or 0
    return str(architecture.get("model_type") or "bert"), int(heads), int(hidden)


def compare_graphs(model_dir: Path, a: Path, b: Path, rounds: int = 5) -> dict[str, float]:
    """Embed ``CHECK_TEXTS`` with graphs ``a`` and ``b`` the way the engine does (same
    tokenizer and config from ``model_dir``): their largest componentwise difference, and the
    total time of each over ``rounds`` runs on a batch of short texts, in alternation."""
    from inference.engine import EmbeddingModel

    config = read_model_config(model_dir)
    settings = {"engine_sessions": 1, "intra_op_parallelism": 1, "spin_control": False}
    first = EmbeddingModel(a, model_dir, config, settings)
    second = EmbeddingModel(b, model_dir, config, settings)
    texts = list(CHECK_TEXTS)
    diff = float(np.abs(first.embed(texts).vectors - second.embed(texts).vectors).max())
    batch = [f"{text} ({i})" for i, text in enumerate(CHECK_TEXTS[:4] * 4)]
    seconds = {"a": 0.0, "b": 0.0}
    for model in (first, second):
        model.embed(batch)  # warm-up: first runs allocate
    for _ in range(rounds):
        for key, model in (("a", first), ("b", second)):
            started = time.perf_counter()
            model.embed(batch)
            seconds[key] += time.perf_counter() - started
    return {"max_abs_diff": diff, "seconds_a": seconds["a"], "seconds_b": seconds["b"]}


def optimize_onnx(
    model_dir: Path,
    onnx_path: Path,
    architecture: dict[str, Any] | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Replace ``onnx_path`` by its ORT-optimised form if that stays within ``TOLERANCE`` and
    runs faster.

    ONNX Runtime fuses much of the same at session start, so the offline graph is not always
    the faster one (for all-MiniLM-L6-v2 on one core it measured about 8% slower): both are
    timed on this machine and the optimised one kept only if clearly faster. Returns what was
    done, for the manifest.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    say = log or (lambda _line: None)
    if external_data_path(onnx_path).exists():
        # The optimiser would write a graph of its own layout; ONNX Runtime fuses the same at
        # session start.
        say("graph optimisation skipped: the graph keeps its weights in external data")
        return {"optimized": False, "reason": "weights in external data"}
    model_type, heads, hidden = _architecture(model_dir, dict(architecture or {}))
    candidate = onnx_path.with_name(onnx_path.stem + ".optimized.onnx")
    try:
        optimized = optimize_model(
            str(onnx_path), model_type=model_type, num_heads=heads, hidden_size=hidden
        )
        fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
        optimized.save_model_to_file(str(candidate), use_external_data_format=False)
        figures = compare_graphs(model_dir, onnx_path, candidate)
    except Exception as exc:  # the optimiser is best effort: the original graph still serves
        candidate.unlink(missing_ok=True)
        say(f"graph optimisation skipped: {exc}")
        return {"optimized": False, "reason": str(exc)}
    diff = figures["max_abs_diff"]
    result = {
        "fused": fused,
        "max_abs_diff": diff,
        "seconds": {"original": figures["seconds_a"], "optimized": figures["seconds_b"]},
    }
    if diff > TOLERANCE:
        reason = f"optimised graph differs by {diff:.1e} (> {TOLERANCE:g})"
    elif figures["seconds_b"] * SPEEDUP_NEEDED > figures["seconds_a"]:
        reason = "optimised graph was not faster here"
    else:
        shutil.move(candidate, onnx_path)
        summary = ", ".join(f"{k} x{v}" for k, v in sorted(fused.items())) or "no fusions"
        say(
            f"using the optimised graph ({summary}): embeddings within {diff:.1e}, "
            f"{figures['seconds_a'] / figures['seconds_b']:.2f}x as fast"
        )
        return {"optimized": True, **result}
    candidate.unlink(missing_ok=True)
    say(f"{reason}; keeping the original graph")
    return {"optimized": False, "reason": reason, **result}
