"""Preparing a fetched model's fp32 graph, in a process of its own.

``prepare_graph`` exports the ONNX graph where the source has none, optimises it for CPU, and
runs the parity gate against the original model (``inference/parity.py``). That holds
PyTorch's model, the traced graph, the optimiser's copies and the gate's sessions at once:
several times the model's weights (about 11 times for bge-base, ``bench/addmodel.py``). A
long-running worker would keep most of that memory after it finished, so ``prepare_in_child``
runs it in a child process (``python -m inference.preparation``) whenever PyTorch is involved,
which gives it all back on exit; the child dies with its parent, streams its log lines, and a
child killed (out of memory, say) fails the deployment with what it last said.

The child's protocol, one JSON object per line on its standard output: ``{"log": line}``,
then ``{"result": {...}}`` or ``{"error": message}``. Anything else it prints goes to its
standard error.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inference import export, layout, parity
from inference.modelconfig import ModelConfigError, read_model_config, read_rerank_config

Log = Callable[[str], None]
_STDERR_LINES_KEPT = 20


class PreparationError(RuntimeError):
    """The graph could not be prepared or did not pass the parity gate; the message says why."""


def prepare_graph(
    staging: Path,
    *,
    uri: str,
    export_needed: bool,
    architecture: dict[str, Any],
    parity_required: bool,
    log: Log,
    kind: str = "embedding",
) -> dict[str, Any]:
    """Export (where ``export_needed``), optimise and check the graph at ``layout.FP32_ONNX``
    in ``staging``; returns ``{"preparation": ..., "parity": figures or None}``. A reranker
    (``kind``) is exported with its classification head and checked against CrossEncoder."""
    if kind == "reranker":
        return _prepare_reranker(
            staging, uri=uri, export_needed=export_needed, required=parity_required, log=log
        )
    fp32 = staging / layout.FP32_ONNX
    preparation: dict[str, Any] = {"exported": export_needed}
    if export_needed:
        try:
            preparation["export_max_abs_diff"] = export.export_onnx(staging, fp32, log)
        except export.ExportError as exc:
            raise PreparationError(str(exc)) from None
    preparation.update(export.optimize_onnx(staging, fp32, architecture, log))
    figures = _parity_gate(staging, fp32, uri=uri, required=parity_required, log=log)
    return {"preparation": preparation, "parity": figures}


def _prepare_reranker(
    staging: Path, *, uri: str, export_needed: bool, required: bool, log: Log
) -> dict[str, Any]:
    """A cross-encoder's graph: exported with its head, and held to ``CrossEncoder.predict``.
    The offline optimiser is left out: its fusions are the embedder's, checked on embeddings,
    and ONNX Runtime fuses the same at session start."""
    from inference import reranker  # PyTorch-side code: imported where a reranker is prepared

    fp32 = staging / layout.FP32_ONNX
    preparation: dict[str, Any] = {"exported": export_needed, "optimized": False}
    try:
        config = read_rerank_config(staging)
        if export_needed:
            preparation["export_max_abs_diff"] = reranker.export_cross_encoder(staging, fp32, log)
    except (export.ExportError, ModelConfigError) as exc:
        raise PreparationError(str(exc)) from None
    if not _has_weights(staging, uri=uri, required=required, log=log):
        return {"preparation": preparation, "parity": None}
    try:
        result = reranker.check_rerank_parity(staging, fp32, config, log=log)
    except parity.ParityError as exc:
        raise PreparationError(f"the parity gate cannot run: {exc}") from None
    if not result.passed:
        raise PreparationError(
            f"{uri} does not score as the original cross-encoder does: {result.summary()}; "
            f"the worst document was {result.worst_document[:60]!r}. Nothing was installed"
        )
    return {"preparation": preparation, "parity": result.to_manifest()}


def _has_weights(staging: Path, *, uri: str, required: bool, log: Log) -> bool:
    """Whether the source has PyTorch weights to check the graph against (PreparationError
    where ``required`` and it has none)."""
    if any((staging / rel).is_file() for rel in layout.WEIGHT_FILES):
        return True
    if required:
        raise PreparationError(
            f"{uri}'s source has no PyTorch weights to check the serving graph against"
        )
    log("parity gate: the source ships the ONNX graph alone, with no original to compare")
    return False


def _parity_gate(
    staging: Path, fp32: Path, *, uri: str, required: bool, log: Log
) -> dict[str, Any] | None:
    """The gate's figures for the manifest, or None where there is nothing to compare with (a
    shipped model whose source has no PyTorch weights, or no reference extra installed). An
    added model (``required``) must pass: it has no other warrant."""
    if not _has_weights(staging, uri=uri, required=required, log=log):
        return None
    if not required and not parity.reference_available():
        log("parity gate skipped: sentence-transformers is not installed (the reference extra)")
        return None
    try:
        result = parity.check_parity(staging, fp32, read_model_config(staging), log=log)
    except (parity.ParityError, ModelConfigError) as exc:
        raise PreparationError(f"the parity gate cannot run: {exc}") from None
    if not result.passed:
        raise PreparationError(
            f"{uri} does not serve what the original model computes: {result.summary()}; "
            f"the worst text was {result.worst_text[:60]!r}. Nothing was installed"
        )
    return result.to_manifest()


def prepare(staging: Path, *, log: Log, **arguments: Any) -> dict[str, Any]:
    """``prepare_graph``, in a child process where PyTorch runs (an export, or the parity gate
    on the source's weights); a graph that only needs the optimiser is prepared here, without
    the child's start-up (a few seconds of imports)."""
    if arguments["export_needed"] or any((staging / rel).is_file() for rel in layout.WEIGHT_FILES):
        return prepare_in_child(staging, log=log, **arguments)
    return prepare_graph(staging, log=log, **arguments)


# -- the child process ---------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child, before it runs: be killed when the worker that started it dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def prepare_in_child(staging: Path, *, log: Log, **arguments: Any) -> dict[str, Any]:
    """``prepare_graph`` in a child process; its log lines reach ``log`` as they come."""
    request = json.dumps({"staging": str(staging), **arguments})
    child = subprocess.Popen(
        [sys.executable, "-m", "inference.preparation", request],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    assert child.stdout is not None and child.stderr is not None
    tail: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES_KEPT)
    errors = child.stderr

    def keep_stderr() -> None:
        for line in errors:
            tail.append(line.rstrip())

    reader = threading.Thread(target=keep_stderr, name="preparation-stderr", daemon=True)
    reader.start()
    outcome: dict[str, Any] = {}
    try:
        for line in child.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                tail.append(line.rstrip())
                continue
            if "log" in message:
                log(str(message["log"]))
            else:
                outcome = message
    finally:
        code = child.wait()
        reader.join(timeout=5)
    if "result" in outcome:
        return dict(outcome["result"])
    if "error" in outcome:
        raise PreparationError(str(outcome["error"]))
    how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
    hint = " (out of memory?)" if code == -signal.SIGKILL else ""
    last = "; ".join(line for line in tail if line.strip())[-600:]
    raise PreparationError(
        f"the process preparing the graph {how}{hint} before it finished"
        + (f"; it said: {last}" if last else "")
    )


def main() -> int:
    """The child: read the request from argv, answer on the original standard output."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    # Libraries that print (progress bars, warnings) must not garble the protocol.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    request = json.loads(sys.argv[1])

    def say(line: str) -> None:
        out.write(json.dumps({"log": line}) + "\n")

    try:
        result = prepare_graph(
            Path(request["staging"]),
            uri=request["uri"],
            export_needed=bool(request["export_needed"]),
            architecture=dict(request.get("architecture") or {}),
            parity_required=bool(request["parity_required"]),
            log=say,
            kind=str(request.get("kind") or "embedding"),
        )
    except PreparationError as exc:
        out.write(json.dumps({"error": str(exc)}) + "\n")
        return 1
    out.write(json.dumps({"result": result}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
