"""The service behind the sidecar's routes: registry, settings, loaded models and metrics.

Nothing here knows about HTTP. A request the service refuses raises a ``ServiceError`` (or one
of the registry's ``RegistryError``) whose message says what was wrong and what to do;
``inference/http.py`` maps each class to its status and error code.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from inference import config as env
from inference import quantize, sidecar_settings
from inference.batcher import BatcherClosedError, DynamicBatcher
from inference.chunking import Chunk, ChunkingError
from inference.cpu import CpuFeatures, read_cpu
from inference.engine import EmbeddingModel, EmbedResult, InputTooLongError
from inference.metrics import Metrics
from inference.modelconfig import ModelConfig, RerankConfig
from inference.registry import (
    ModelPathError,
    Registry,
    RegistryError,
    UnknownModel,
    check_uri,
    resolve_model,
)
from inference.reranker import RerankModel, RerankResult
from inference.store import verify_for_load

log = logging.getLogger("inference.sidecar")


def _version() -> str:
    try:
        return importlib.metadata.version("pg-local-ai")
    except importlib.metadata.PackageNotFoundError:
        try:
            pyproject = tomllib.loads((env.PROJECT_ROOT / "pyproject.toml").read_text())
            return str(pyproject["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


VERSION = _version()


# -- errors -----------------------------------------------------------------------------------


class SidecarStateError(RuntimeError):
    """A state file of the sidecar cannot be read; the message says which and what to do."""


class ServiceError(Exception):
    """A request the service refuses; ``param`` names the request field at fault."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        details: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.details = details


class ModelNotLoaded(ServiceError):
    """The model is registered but not loaded (or was unloaded while the request waited)."""


class ModelLoadError(ServiceError):
    """The model's files cannot be loaded into an engine."""


class InputTooLong(ServiceError):
    """``truncate`` is false and an input has more tokens than the model accepts."""


class EmbedTimeout(ServiceError):
    """The model did not answer within the caller's timeout."""


class WrongModelKind(ServiceError):
    """An embedding model asked to rerank, or a reranker asked to embed."""


class DimensionsNotSupported(ServiceError):
    """``dimensions`` asks for a length the model was not trained to give."""


class SettingsRejected(ServiceError):
    """A settings update with bad values; ``details`` names each bad key. Nothing changed."""


# -- loaded models ----------------------------------------------------------------------------


@dataclass
class LoadedModel:
    uri: str
    model: EmbeddingModel | RerankModel
    batcher: DynamicBatcher
    config: ModelConfig | RerankConfig

    @property
    def kind(self) -> str:
        return self.config.kind


_KIND_WORDS = {
    "embedding": "an embedding model (it gives a vector per text)",
    "reranker": "a reranker (a cross-encoder: it scores query-document pairs)",
}
_KIND_USES = {
    "embedding": "/v1/embeddings or azure_local_ai.create_embeddings()",
    "reranker": "/v1/rerank, /rerank or azure_local_ai.rank()",
}


def wrong_kind(uri: str, kind: str, asked: str) -> WrongModelKind:
    """The refusal of ``asked`` ("embed", "rerank", "chunk") for a model of ``kind``."""
    return WrongModelKind(
        f"model {uri} is {_KIND_WORDS[kind]}, so it cannot {asked}; use it with "
        f"{_KIND_USES[kind]}, or name a model of the other kind",
        param="model",
    )


def truncate_dimensions(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """Matryoshka truncation: keep the first ``dimensions`` and renormalise each row."""
    if dimensions >= vectors.shape[1]:
        return vectors
    cut = np.array(vectors[:, :dimensions], dtype=np.float32)
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    cut /= np.maximum(norms, 1e-12)
    return cut


def check_dimensions(uri: str, config: ModelConfig, dimensions: int) -> None:
    """Refuse a length the model was not trained to be cut to (its full one is always fine).

    Cutting the vector of a model trained without Matryoshka representation learning gives
    vectors that still look normal but rank poorly, so it is refused rather than served.
    """
    allowed = config.output_dimensions()
    if dimensions in allowed:
        return
    full = config.dimensions
    if not config.matryoshka_dimensions:
        message = (
            f"model {uri} gives {full} dimensions and was not trained to be cut shorter "
            f"(Matryoshka representation learning), so dimensions can only be {full} for it, "
            f"got {dimensions}; omit dimensions, or deploy a model whose catalog entry declares "
            "matryoshka_dimensions"
        )
    else:
        message = (
            f"model {uri} gives {full} dimensions and was trained to be cut to "
            f"{', '.join(map(str, config.matryoshka_dimensions))}; dimensions must be one of "
            f"{', '.join(map(str, allowed))}, got {dimensions}"
        )
    raise DimensionsNotSupported(message, param="dimensions")


def _timeout(uri: str, timeout_s: float, what: str) -> EmbedTimeout:
    """The refusal of a request whose caller's time budget ran out."""
    return EmbedTimeout(
        f"model {uri} did not answer within the caller's timeout of {timeout_s * 1000:g} ms "
        f"(X-Timeout-Ms); send fewer {what} per request or allow more time"
    )


class Sidecar:
    """The service behind the routes: registry, settings, loaded models and metrics."""

    def __init__(self, var_dir: Path, cpu: CpuFeatures | None = None) -> None:
        state_dir = var_dir / "sidecar"
        # The CPU that int8 variants are checked against (default: this machine's), and the
        # verdicts of the checks made for variants made in another format.
        self.cpu = cpu or read_cpu()
        self._int8_checks = state_dir / "int8_checks.json"
        settings_path = state_dir / "settings.json"
        try:
            self.settings = sidecar_settings.SettingsFile(settings_path)
        except ValueError as exc:  # JSONDecodeError and SettingsValidationError are ValueErrors
            raise SidecarStateError(
                f"the sidecar settings file {settings_path} is damaged ({exc}); fix the value or "
                "delete the file to return to the defaults"
            ) from None
        try:
            self.registry = Registry(state_dir / "registry.json")
        except RegistryError as exc:
            raise SidecarStateError(str(exc)) from None
        self.metrics = Metrics()
        self.models: dict[str, LoadedModel] = {}
        self.load_errors: dict[str, str] = {}
        # The request path reads limits from this snapshot, replaced whole on every change.
        self.values: dict[str, Any] = self.settings.values()
        self._model_locks: dict[str, asyncio.Lock] = {}
        self._settings_lock = asyncio.Lock()

    def _lock(self, uri: str) -> asyncio.Lock:
        return self._model_locks.setdefault(uri, asyncio.Lock())

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load again the models that were loaded when the sidecar last stopped."""
        for entry in self.registry.entries():
            if not entry["loaded"]:
                continue
            uri = entry["model_uri"]
            try:
                await self._load(uri, persist=False)
                log.info("reloaded model %s", uri)
            except ModelLoadError as exc:
                self.load_errors[uri] = exc.message
                log.error("could not reload model %s: %s", uri, exc)

    async def stop(self) -> None:
        for loaded in list(self.models.values()):
            # close() waits for a run under way: not on the event loop.
            await asyncio.to_thread(loaded.batcher.close)
        self.models.clear()
        self.metrics.models_loaded.set(0)

    # -- loading ------------------------------------------------------------------------------

    async def _load(self, uri: str, *, persist: bool = True) -> LoadedModel:
        """Load ``uri`` (a no-op if loaded); ModelLoadError says why it cannot be."""
        entry = self.registry.get(uri)
        async with self._lock(uri):
            loaded = self.models.get(uri)
            if loaded is None:
                loaded = await self._build(entry)
                self.models[uri] = loaded
                self.load_errors.pop(uri, None)
                self.metrics.models_loaded.set(len(self.models))
        if persist:
            self.registry.set_loaded(uri, True)
        return loaded

    async def _build(self, entry: Mapping[str, Any]) -> LoadedModel:
        uri = entry["model_uri"]
        values = self.settings.values()
        try:
            source = await asyncio.to_thread(
                resolve_model, entry["model_path"], entry["tokenizer_path"], entry["precision"]
            )
            problems = await asyncio.to_thread(verify_for_load, Path(entry["model_path"]))
            if problems:
                raise ModelLoadError(
                    f"refusing to load model {uri}: its files in {entry['model_path']} are not "
                    f"those deployed ({'; '.join(problems)}); deploy it again"
                )
            if entry["precision"] == "int8" and source.manifest is not None:
                await asyncio.to_thread(self._check_int8, uri, source.root, source.manifest)
            # Building the session takes a while for real models: keep the event loop serving.
            kind = RerankModel if isinstance(source.config, RerankConfig) else EmbeddingModel
            model = await asyncio.to_thread(
                kind,  # type: ignore[arg-type]
                source.onnx_path,
                source.tokenizer_dir,
                source.config,
                values,
            )
        except ModelPathError as exc:
            raise ModelLoadError(f"cannot load model {uri}: {exc}") from None
        except ModelLoadError:
            raise
        except Exception as exc:  # ONNX Runtime and tokenizer errors come in many classes
            log.warning("loading %s failed", uri, exc_info=True)
            raise ModelLoadError(
                f"cannot load model {uri} from {entry['model_path']}: {exc}"
            ) from None
        batcher = DynamicBatcher(model, values, on_batch=self.metrics.batch_callback(uri))
        return LoadedModel(uri, model, batcher, source.config)

    def _check_int8(self, uri: str, model_dir: Path, manifest: Mapping[str, Any]) -> None:
        """An int8 variant made in another CPU's format is measured again here before it is
        served (once per file and CPU); one that fails is refused."""
        try:
            check = quantize.check_int8_for_cpu(model_dir, manifest, self.cpu, self._int8_checks)
        except quantize.Int8NotAdmittedHere as exc:
            raise ModelLoadError(f"refusing to load model {uri} in int8: {exc}") from None
        if check is not None:
            log.info("model %s: %s", uri, check.summary())

    async def _unload(self, uri: str, *, persist: bool = True) -> None:
        self.registry.get(uri)
        async with self._lock(uri):
            loaded = self.models.pop(uri, None)
            if loaded is not None:
                await asyncio.to_thread(loaded.batcher.close)
            self.load_errors.pop(uri, None)
            self.metrics.models_loaded.set(len(self.models))
        if persist:
            self.registry.set_loaded(uri, False)

    async def load(self, uri: str) -> dict[str, Any]:
        """Load a registered model and keep it loaded across restarts; its description.

        A failure is remembered (``load_error`` in its description, ``/health`` degraded).
        """
        try:
            await self._load(uri)
        except ModelLoadError as exc:
            self.load_errors[uri] = exc.message
            raise ModelLoadError(exc.message, param="model_uri") from None
        return self.describe(uri)

    async def unload(self, uri: str) -> dict[str, Any]:
        """Unload a model and keep it unloaded across restarts; its description."""
        await self._unload(uri)
        return self.describe(uri)

    # -- registry -----------------------------------------------------------------------------

    async def register(
        self,
        uri: str,
        model_path: str,
        tokenizer_path: str | None = None,
        precision: str = "fp32",
        *,
        load: bool = True,
    ) -> tuple[dict[str, Any], bool]:
        """Register a model (and load it when ``load``); its description and whether it is new.

        The same URI with the same files gives the existing registration; with other files,
        RegistrationConflict. A new model that cannot load is not left registered.
        """
        check_uri(uri)
        existing = self.registry.find(uri, model_path, tokenizer_path, precision)
        if existing is None:
            source = await asyncio.to_thread(resolve_model, model_path, tokenizer_path, precision)
            metadata = source.metadata()
            metadata["files"] = await asyncio.to_thread(source.file_hashes)
            entry = self.registry.add(
                uri, model_path, tokenizer_path, precision, metadata, loaded=False
            )
            created = True
        else:
            entry, created = existing, False
        if load:
            try:
                await self._load(uri)
            except ModelLoadError as exc:
                if created:
                    self.registry.remove(uri)
                raise ModelLoadError(exc.message, param="model_path") from None
        log.info("registered model %s (id %s) from %s", uri, entry["id"], model_path)
        return self.describe(uri), created

    async def unregister(self, uri: str) -> dict[str, Any]:
        """Unload the model if loaded, then forget it; the registration it had."""
        await self._unload(uri, persist=False)
        entry = self.registry.remove(uri)
        log.info("unregistered model %s", uri)
        return entry

    def describe(self, uri: str) -> dict[str, Any]:
        """The registration, its metadata and the live state."""
        entry = self.registry.get(uri)
        name, _, version = uri.partition(":")
        described = {**entry, "name": name, "version": version, "loaded": uri in self.models}
        if uri in self.load_errors:
            described["load_error"] = self.load_errors[uri]
        return described

    def describe_all(self) -> list[dict[str, Any]]:
        return [self.describe(uri) for uri in self.registry.uris()]

    def model_facts(self, uri: str) -> dict[str, Any]:
        """What a user of the model needs to know: ``model_uri``, ``registered_at``,
        ``dimensions``, ``max_tokens``, ``pooling``, ``normalize``, ``prefixes``,
        ``matryoshka_dimensions``, ``license`` (``{name, url}`` or None), ``precision`` and
        ``loaded``. A loaded model's config is the one it is served with."""
        return self._facts(self.registry.get(uri))

    def all_model_facts(self) -> list[dict[str, Any]]:
        """``model_facts`` of every registered model, in registration order."""
        return [self._facts(entry) for entry in self.registry.entries()]

    def _facts(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        uri = entry["model_uri"]
        loaded = self.models.get(uri)
        config = loaded.config.to_manifest() if loaded is not None else entry
        license_info = entry.get("license")
        kind = config.get("kind") or "embedding"  # registrations older than the key: embedders
        if kind == "reranker":
            described: dict[str, Any] = {
                "dimensions": None,
                "max_tokens": config["max_tokens"],
                "activation": config["activation"],
            }
        else:
            described = {
                "dimensions": config["dimensions"],
                "max_tokens": config["max_tokens"],
                "pooling": config["pooling"],
                "normalize": config["normalize"],
                "prefixes": config["prefixes"],
                # Registrations older than the key declare none.
                "matryoshka_dimensions": config.get("matryoshka_dimensions", []),
            }
        return {
            "model_uri": uri,
            "kind": kind,
            "registered_at": entry.get("registered_at", ""),
            **described,
            "license": (
                {"name": license_info.get("name"), "url": license_info.get("url")}
                if isinstance(license_info, Mapping)
                else None
            ),
            "precision": entry["precision"],
            "loaded": loaded is not None,
        }

    # -- embedding ----------------------------------------------------------------------------

    def require_loaded(self, uri: str) -> LoadedModel:
        loaded = self.models.get(uri)
        if loaded is not None:
            return loaded
        registered = self.registry.uris()
        if uri in registered:
            problem = (
                f" (last load failed: {self.load_errors[uri]})" if uri in self.load_errors else ""
            )
            raise ModelNotLoaded(
                f"model {uri!r} is not deployed: it is registered but not loaded{problem}; "
                "deploy it in the console (Models, or tick AZURE_LOCAL_AI in Server "
                f"parameters), or load it with POST /models/{uri}/load",
                param="model",
            )
        raise UnknownModel(uri, registered)

    async def embed(
        self,
        uri: str,
        texts: list[str],
        *,
        input_type: str | None,
        truncate: bool,
        timeout_s: float | None,
        dimensions: int | None = None,
    ) -> EmbedResult:
        """Embed ``texts`` with a loaded model, cut to ``dimensions`` when given."""
        loaded = self.require_loaded(uri)
        if not isinstance(loaded.config, ModelConfig):
            raise wrong_kind(uri, loaded.kind, "embed texts")
        if dimensions is not None:
            check_dimensions(uri, loaded.config, dimensions)
        try:
            # asyncio.timeout, not wait_for: no task of its own for every request.
            async with asyncio.timeout(timeout_s):
                result = await loaded.batcher.embed(texts, input_type=input_type, truncate=truncate)
        except InputTooLongError as exc:
            raise InputTooLong(
                f"input[{exc.index}] has {exc.tokens} tokens, more than model {uri}'s limit of "
                f"{exc.max_tokens} (special tokens included); shorten it, split it, or send "
                "truncate=true to cut it to the limit",
                param="input",
            ) from None
        except BatcherClosedError as exc:
            raise ModelNotLoaded(f"model {uri}: {exc}", param="model") from None
        except TimeoutError:
            if timeout_s is None:  # no budget of the caller's ran out: not a refusal
                raise
            raise _timeout(uri, timeout_s, "inputs") from None
        if dimensions is not None:
            result = replace(result, vectors=truncate_dimensions(result.vectors, dimensions))
        return result

    def default_rerank_model(self) -> str:
        """The setting ``default_rerank_model``: the reranker of requests that name none."""
        uri = str(self.values.get("default_rerank_model") or "")
        if not uri:
            raise ServiceError(
                "no reranker was named and the setting default_rerank_model is empty; name "
                "the model (model in the body, or rank(..., model => 'name:version') in SQL), "
                "or set it with SELECT azure_local_ai.set_setting('default_rerank_model', "
                "'name:version') or PUT /settings",
                param="model",
            )
        return uri

    async def rerank(
        self,
        uri: str | None,
        query: str,
        documents: list[str],
        *,
        raw: bool = False,
        timeout_s: float | None = None,
    ) -> tuple[str, RerankResult]:
        """Score ``documents`` against ``query`` with a loaded reranker (default: the setting
        ``default_rerank_model``); returns the model's URI and the scores in document order."""
        uri = uri or self.default_rerank_model()
        loaded = self.require_loaded(uri)
        if not isinstance(loaded.config, RerankConfig):
            raise wrong_kind(uri, loaded.kind, "rerank documents")
        try:
            async with asyncio.timeout(timeout_s):
                result = await loaded.batcher.rerank(query, documents, raw=raw)
        except BatcherClosedError as exc:
            raise ModelNotLoaded(f"model {uri}: {exc}", param="model") from None
        except TimeoutError:
            if timeout_s is None:
                raise
            raise _timeout(uri, timeout_s, "documents") from None
        return uri, result

    async def chunk(
        self, uri: str, texts: list[str], *, size: int, overlap: int, input_type: str | None
    ) -> list[list[Chunk]]:
        """Split ``texts`` by the model's tokens into chunks that embed without being cut."""
        loaded = self.require_loaded(uri)
        if not isinstance(loaded.model, EmbeddingModel):
            raise wrong_kind(uri, loaded.kind, "chunk texts for embedding")
        try:
            # Tokenizing is CPU work of its own: off the event loop, beside the batches.
            return await asyncio.to_thread(
                loaded.model.chunk, texts, size, overlap, input_type=input_type
            )
        except ChunkingError as exc:
            raise ServiceError(f"model {uri}: {exc}", param="size") from None

    # -- settings and health ------------------------------------------------------------------

    def settings_described(self) -> dict[str, Any]:
        """``{"values": {key: value}, "schema": [...]}``: the values and what each setting is."""
        return {"values": self.settings.values(), "schema": sidecar_settings.schema()}

    async def update_settings(self, updates: Mapping[str, Any]) -> dict[str, Any]:
        """Validate, persist and apply ``updates`` to every loaded model; all or nothing."""
        async with self._settings_lock:
            try:
                values = self.settings.update(updates)
            except sidecar_settings.SettingsValidationError as exc:
                raise SettingsRejected(
                    f"settings not changed: {exc}",
                    param=next(iter(exc.errors)),
                    details=exc.errors,
                ) from None
            self.values = values
            for loaded in list(self.models.values()):
                # May rebuild the ONNX Runtime session: not on the event loop.
                await asyncio.to_thread(loaded.model.apply_settings, values)
                loaded.batcher.apply_settings(values)
            return values

    def health(self) -> dict[str, Any]:
        """Liveness and readiness: ``degraded`` while a model that should be loaded failed to
        load."""
        models = []
        for uri in self.registry.uris():
            item: dict[str, Any] = {"model_uri": uri, "loaded": uri in self.models}
            if uri in self.load_errors:
                item["error"] = self.load_errors[uri]
            models.append(item)
        status = "degraded" if self.load_errors else "ok"
        # The process's resident memory: what its loaded models (and the rest) occupy.
        rss_mb = round(psutil.Process().memory_info().rss / 2**20, 1)
        # How each loaded model uses the machine, as the settings resolve on it.
        chosen = sidecar_settings.layout(self.settings.values())
        return {
            "status": status,
            "models": models,
            "version": VERSION,
            "memory_rss_mb": rss_mb,
            "layout": {
                "sessions": chosen.sessions,
                "threads": chosen.threads,
                "lone_request_threads": chosen.lone_threads,
                "cores": chosen.cores,
                "description": chosen.describe(),
            },
        }
