"""The inference sidecar: an HTTP service that embeds text with the registered ONNX models.

Routes (DESIGN.md §6, docs/architecture.md "Sidecar HTTP"):

* ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /v1/models/{uri}``: OpenAI-compatible.
* ``POST /models``, ``GET /models``, ``GET|DELETE /models/{uri}``, ``POST /models/{uri}/load``,
  ``POST /models/{uri}/unload``: the model registry.
* ``GET /settings`` (``?describe=1`` adds the schema), ``PUT /settings``: live settings.
* ``GET /health`` (never needs the token), ``GET /metrics`` (Prometheus text).
* ``POST /internal/embed``: the binary route of ``inference/protocol.py`` for the SQL module.

Every error is ``{"error": {"message", "type", "param", "code"}}`` with a code of
``protocol.ErrorCode`` (plus ``timeout`` for a request that ran out of its ``X-Timeout-Ms``).
Both embedding routes accept ``X-Timeout-Ms``: the milliseconds the caller will wait; 0 or
absent means no limit (as with PostgreSQL's timeouts).

Request limits come from the settings and apply as soon as they change: a body larger than
``max_request_bytes`` and more inputs than ``max_inputs_per_request`` get 413. An empty input
list and an empty string are refused with 400 (the message names the index): an empty text has
no meaning to embed, and OpenAI's API refuses it too.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import importlib.metadata
import json
import logging
import time
import tomllib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference import config as env
from inference import protocol, sidecar_settings
from inference.batcher import BatcherClosedError, DynamicBatcher
from inference.engine import EmbeddingModel, EmbedResult, InputTooLongError
from inference.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from inference.metrics import Metrics
from inference.modelconfig import ModelConfig
from inference.protocol import ErrorCode
from inference.registry import (
    PRECISIONS,
    InvalidModelURI,
    ModelPathError,
    RegistrationConflict,
    Registry,
    RegistryError,
    UnknownModel,
    check_uri,
    resolve_model,
)

log = logging.getLogger("inference.sidecar")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8090
INPUT_TYPES = ("query", "passage")
ENCODING_FORMATS = ("float", "base64")

_ERROR_TYPES = {
    401: "authentication_error",
    500: "server_error",
    504: "timeout_error",
}


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


class APIError(Exception):
    """An error response: HTTP status, ``error.code`` and a message for people."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.details = details


def error_body(error: APIError) -> dict[str, Any]:
    body: dict[str, Any] = {
        "message": error.message,
        "type": _ERROR_TYPES.get(error.status, "invalid_request_error"),
        "param": error.param,
        "code": error.code,
    }
    if error.details is not None:
        body["details"] = dict(error.details)
    return {"error": body}


def _invalid(message: str, param: str | None = None, status: int = 422) -> APIError:
    return APIError(status, ErrorCode.INVALID_INPUT, message, param=param)


def _registry_error(exc: RegistryError) -> APIError:
    if isinstance(exc, UnknownModel):
        return APIError(404, ErrorCode.MODEL_NOT_FOUND, str(exc), param="model")
    if isinstance(exc, RegistrationConflict):
        return APIError(409, ErrorCode.INVALID_INPUT, str(exc), param="model_path")
    if isinstance(exc, InvalidModelURI):
        return APIError(400, ErrorCode.INVALID_INPUT, str(exc), param="model_uri")
    if isinstance(exc, ModelPathError):
        return APIError(400, ErrorCode.INVALID_INPUT, str(exc), param="model_path")
    return APIError(400, ErrorCode.INVALID_INPUT, str(exc))


class ModelLoadError(Exception):
    pass


class SidecarStateError(RuntimeError):
    """A state file of the sidecar cannot be read; the message says which and what to do."""


# -- loaded models ----------------------------------------------------------------------------


@dataclass
class LoadedModel:
    uri: str
    model: EmbeddingModel
    batcher: DynamicBatcher
    config: ModelConfig


class Sidecar:
    """The service behind the routes: registry, settings, loaded models and metrics."""

    def __init__(self, var_dir: Path) -> None:
        state_dir = var_dir / "sidecar"
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

    async def start(self) -> None:
        """Load again the models that were loaded when the sidecar last stopped."""
        for entry in self.registry.entries():
            if not entry["loaded"]:
                continue
            uri = entry["model_uri"]
            try:
                await self.load(uri, persist=False)
                log.info("reloaded model %s", uri)
            except ModelLoadError as exc:
                self.load_errors[uri] = str(exc)
                log.error("could not reload model %s: %s", uri, exc)

    async def stop(self) -> None:
        for loaded in list(self.models.values()):
            # close() waits for a run under way: not on the event loop.
            await asyncio.to_thread(loaded.batcher.close)
        self.models.clear()
        self.metrics.models_loaded.set(0)

    async def load(self, uri: str, *, persist: bool = True) -> LoadedModel:
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
            # Building the session takes a while for real models: keep the event loop serving.
            model = await asyncio.to_thread(
                EmbeddingModel, source.onnx_path, source.tokenizer_dir, source.config, values
            )
        except ModelPathError as exc:
            raise ModelLoadError(f"cannot load model {uri}: {exc}") from None
        except Exception as exc:  # ONNX Runtime and tokenizer errors come in many classes
            log.warning("loading %s failed", uri, exc_info=True)
            raise ModelLoadError(
                f"cannot load model {uri} from {entry['model_path']}: {exc}"
            ) from None
        batcher = DynamicBatcher(model, values, on_batch=self.metrics.batch_callback(uri))
        return LoadedModel(uri, model, batcher, source.config)

    async def unload(self, uri: str, *, persist: bool = True) -> None:
        self.registry.get(uri)
        async with self._lock(uri):
            loaded = self.models.pop(uri, None)
            if loaded is not None:
                await asyncio.to_thread(loaded.batcher.close)
            self.load_errors.pop(uri, None)
            self.metrics.models_loaded.set(len(self.models))
        if persist:
            self.registry.set_loaded(uri, False)

    def describe(self, uri: str) -> dict[str, Any]:
        """``GET /models/{uri}``: the registration, its metadata and the live state."""
        entry = self.registry.get(uri)
        name, _, version = uri.partition(":")
        described = {**entry, "name": name, "version": version, "loaded": uri in self.models}
        if uri in self.load_errors:
            described["load_error"] = self.load_errors[uri]
        return described

    def require_loaded(self, uri: str) -> LoadedModel:
        loaded = self.models.get(uri)
        if loaded is not None:
            return loaded
        registered = self.registry.uris()
        if uri in registered:
            problem = (
                f" (last load failed: {self.load_errors[uri]})" if uri in self.load_errors else ""
            )
            raise APIError(
                409,
                ErrorCode.MODEL_NOT_LOADED,
                f"model {uri!r} is not deployed: it is registered but not loaded{problem}; "
                "deploy it in the console (Models, or tick AZURE_LOCAL_AI in Server "
                f"parameters), or load it with POST /models/{uri}/load",
                param="model",
            )
        raise _registry_error(UnknownModel(uri, registered))

    async def embed(
        self,
        uri: str,
        texts: list[str],
        *,
        input_type: str | None,
        truncate: bool,
        timeout_s: float | None,
    ) -> EmbedResult:
        loaded = self.require_loaded(uri)
        work = loaded.batcher.embed(texts, input_type=input_type, truncate=truncate)
        try:
            if timeout_s is None:
                return await work
            return await asyncio.wait_for(work, timeout_s)
        except InputTooLongError as exc:
            raise APIError(
                413,
                ErrorCode.INPUT_TOO_LONG,
                f"input[{exc.index}] has {exc.tokens} tokens, more than model {uri}'s limit of "
                f"{exc.max_tokens} (special tokens included); shorten it, split it, or send "
                "truncate=true to cut it to the limit",
                param="input",
            ) from None
        except BatcherClosedError as exc:
            raise APIError(
                409, ErrorCode.MODEL_NOT_LOADED, f"model {uri}: {exc}", param="model"
            ) from None
        except TimeoutError:
            if timeout_s is None:
                raise
            raise APIError(
                504,
                ErrorCode.TIMEOUT,
                f"model {uri} did not answer within the caller's timeout of "
                f"{timeout_s * 1000:g} ms (X-Timeout-Ms); send fewer inputs per request or "
                "allow more time",
            ) from None

    async def update_settings(self, updates: Mapping[str, Any]) -> dict[str, Any]:
        """Validate, persist and apply ``updates`` to every loaded model; all or nothing."""
        async with self._settings_lock:
            try:
                values = self.settings.update(updates)
            except sidecar_settings.SettingsValidationError as exc:
                raise APIError(
                    422,
                    ErrorCode.INVALID_INPUT,
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


# -- request parsing --------------------------------------------------------------------------


def _too_large(size: int, limit: int) -> APIError:
    return APIError(
        413,
        ErrorCode.REQUEST_TOO_LARGE,
        f"request body is {size} bytes, more than max_request_bytes ({limit}); send fewer or "
        "shorter inputs per request, or raise the max_request_bytes setting",
        param="input",
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise _invalid(f"Content-Length {declared!r} is not a number", status=400) from None
        if size > limit:
            raise _too_large(size, limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(len(body), limit)
    return bytes(body)


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    body = await read_body(request, limit)
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _invalid(f"request body is not valid JSON: {exc}", status=400) from None
    if not isinstance(payload, dict):
        raise _invalid(f"request body must be a JSON object, got {type(payload).__name__}")
    return payload


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _optional_str(
    payload: Mapping[str, Any], key: str, choices: tuple[str, ...] = ()
) -> str | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or (choices and value not in choices):
        allowed = " or ".join(repr(c) for c in choices) if choices else "a string"
        raise _invalid(f"{key} must be {allowed}, got {_json_type(value)} {value!r}", key)
    return value


def _required_str(payload: Mapping[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value:
        got = "nothing" if key not in payload else f"{_json_type(value)} {value!r}"
        raise _invalid(f"{key} is required and must be a non-empty string, got {got}", key)
    return value


def _optional_bool(payload: Mapping[str, Any], key: str, default: bool) -> bool:
    value = payload.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid(f"{key} must be true or false, got {_json_type(value)} {value!r}", key)
    return value


def check_texts(texts: list[str], limit: int, *, single: bool = False) -> None:
    """Refuse an empty list, too many inputs and empty strings, naming the index."""
    if not texts:
        raise _invalid("input is an empty list; send at least one string", "input", status=400)
    if len(texts) > limit:
        raise APIError(
            413,
            ErrorCode.TOO_MANY_INPUTS,
            f"{len(texts)} inputs in one request, more than max_inputs_per_request ({limit}); "
            "split the request, or raise the max_inputs_per_request setting",
            param="input",
        )
    for index, text in enumerate(texts):
        if not text:
            where = "input" if single else f"input[{index}]"
            raise _invalid(
                f"{where} is an empty string; every input needs some text to embed",
                "input",
                status=400,
            )


def parse_timeout(request: Request) -> float | None:
    """Seconds from ``X-Timeout-Ms``; None when absent or 0 (no limit)."""
    raw = request.headers.get("x-timeout-ms")
    if raw is None:
        return None
    try:
        millis = int(raw)
    except ValueError:
        millis = -1
    if millis < 0:
        raise _invalid(
            f"X-Timeout-Ms must be a whole number of milliseconds (0 for no limit), got {raw!r}",
            "X-Timeout-Ms",
            status=400,
        )
    return millis / 1000 if millis else None


def truncate_dimensions(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """Matryoshka truncation: keep the first ``dimensions`` and renormalise each row."""
    if dimensions >= vectors.shape[1]:
        return vectors
    cut = np.array(vectors[:, :dimensions], dtype=np.float32)
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    cut /= np.maximum(norms, 1e-12)
    return cut


def _created(registered_at: str) -> int:
    try:
        return int(datetime.fromisoformat(registered_at.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def _openai_model(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": entry["model_uri"],
        "object": "model",
        "created": _created(entry.get("registered_at", "")),
        "owned_by": "local",
    }


# -- middleware -------------------------------------------------------------------------------


class Gate:
    """Around every HTTP request: the bearer token, request metrics, and the last-resort 500.

    Written as plain ASGI so that it adds next to nothing to the embedding routes.
    """

    def __init__(self, app: ASGIApp, sidecar: Sidecar, token: str) -> None:
        self.app = app
        self.sidecar = sidecar
        self.token = token.encode()

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credential = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    credential.strip(), self.token
                )
        return False

    async def _send_error(
        self, scope: Scope, receive: Receive, send: Send, error: APIError
    ) -> None:
        self.sidecar.metrics.observe_error(error.code)
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        response = JSONResponse(error_body(error), status_code=error.status, headers=headers)
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.token and scope["path"] != "/health" and not self._authorized(scope):
                error = APIError(
                    401,
                    ErrorCode.UNAUTHORIZED,
                    "missing or wrong bearer token: send the header 'Authorization: Bearer "
                    "<token>' with the sidecar's INFERENCE_TOKEN",
                )
                await self._send_error(scope, receive, send_and_watch, error)
            else:
                await self.app(scope, receive, send_and_watch)
        except Exception as exc:
            log.exception("unexpected error on %s %s", scope["method"], scope["path"])
            if status:
                raise  # the response has started; only closing the connection is left
            error = APIError(
                500,
                ErrorCode.INTERNAL,
                f"the inference sidecar failed unexpectedly ({type(exc).__name__}: "
                f"{str(exc)[:300]}); its log has the details",
            )
            await self._send_error(scope, receive, send_and_watch, error)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            elapsed = time.perf_counter() - start
            self.sidecar.metrics.observe_request(label, scope["method"], status or 500, elapsed)


# -- the app ----------------------------------------------------------------------------------


def create_app(var_dir: Path | None = None, token: str | None = None) -> FastAPI:
    """The sidecar app; state under ``var_dir`` (default ``VAR_DIR``), bearer ``token``
    (default ``INFERENCE_TOKEN``; empty means none)."""
    sidecar = Sidecar(var_dir or env.var_dir())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await sidecar.start()
        try:
            yield
        finally:
            await sidecar.stop()

    app = FastAPI(
        title="Inference sidecar",
        version=VERSION,
        description="Local text embeddings with ONNX Runtime; OpenAI-compatible.",
        lifespan=lifespan,
    )
    app.state.sidecar = sidecar
    app.add_middleware(
        Gate, sidecar=sidecar, token=env.inference_token() if token is None else token
    )

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        sidecar.metrics.observe_error(exc.code)
        return JSONResponse(error_body(exc), status_code=exc.status)

    @app.exception_handler(RegistryError)
    async def registry_error(request: Request, exc: RegistryError) -> JSONResponse:
        return await api_error(request, _registry_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = (
                f"no route {request.method} {request.url.path}; the routes are listed at /docs"
            )
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        error = APIError(exc.status_code, ErrorCode.INVALID_INPUT, message)
        return await api_error(request, error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(part) for part in e['loc'] if part not in ('query', 'path'))}: "
            f"{e['msg']}"
            for e in exc.errors()
        ]
        first = exc.errors()[0]["loc"][-1] if exc.errors() else None
        error = _invalid("; ".join(problems), str(first) if first is not None else None)
        return await api_error(request, error)

    # -- OpenAI-compatible --------------------------------------------------------------------

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        """OpenAI-compatible embeddings.

        Body: ``model``, ``input`` (a string or a list of strings; no empty list, no empty
        string: 400 naming the index), ``encoding_format`` (``float``, or ``base64`` of
        float32 little-endian), ``dimensions`` (keep the first N and renormalise), ``user``
        (ignored); extras ``input_type`` (``query``/``passage``: the model's prefix) and
        ``truncate`` (default true; false refuses an over-long input with 413).
        """
        limits = sidecar.values
        payload = await read_json_object(request, limits["max_request_bytes"])
        uri = _required_str(payload, "model")
        raw = payload.get("input")
        if isinstance(raw, str):
            texts = [raw]
        elif isinstance(raw, list):
            texts = raw
            bad = next((i for i, t in enumerate(raw) if not isinstance(t, str)), None)
            if bad is not None:
                raise _invalid(
                    f"input[{bad}] is {_json_type(raw[bad])}, not a string; send text (token "
                    "arrays are not accepted)",
                    "input",
                )
        else:
            got = "nothing" if "input" not in payload else _json_type(raw)
            raise _invalid(f"input must be a string or a list of strings, got {got}", "input")
        check_texts(texts, limits["max_inputs_per_request"], single=isinstance(raw, str))
        encoding = _optional_str(payload, "encoding_format", ENCODING_FORMATS) or "float"
        input_type = _optional_str(payload, "input_type", INPUT_TYPES)
        truncate = _optional_bool(payload, "truncate", True)
        _optional_str(payload, "user")
        dimensions = payload.get("dimensions")
        if dimensions is not None and (
            not isinstance(dimensions, int) or isinstance(dimensions, bool)
        ):
            raise _invalid(
                f"dimensions must be an integer, got {_json_type(dimensions)} {dimensions!r}",
                "dimensions",
            )
        loaded = sidecar.require_loaded(uri)
        if dimensions is not None and not 1 <= dimensions <= loaded.config.dimensions:
            raise _invalid(
                f"dimensions must be between 1 and {loaded.config.dimensions} for model {uri}, "
                f"got {dimensions}",
                "dimensions",
                status=400,
            )
        result = await sidecar.embed(
            uri,
            texts,
            input_type=input_type,
            truncate=truncate,
            timeout_s=parse_timeout(request),
        )
        vectors = result.vectors
        if dimensions is not None:
            vectors = truncate_dimensions(vectors, dimensions)
        if encoding == "base64":
            rows: list[Any] = [
                base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode("ascii")
                for row in vectors
            ]
        else:
            rows = vectors.tolist()
        tokens = int(sum(result.token_counts))
        body = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)
            ],
            "model": uri,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return Response(
            json.dumps(body, separators=(",", ":")).encode(), media_type="application/json"
        )

    @app.get("/v1/models")
    async def openai_models() -> dict[str, Any]:
        """OpenAI-compatible list of the registered models."""
        return {"object": "list", "data": [_openai_model(e) for e in sidecar.registry.entries()]}

    @app.get("/v1/models/{uri}")
    async def openai_model(uri: str) -> dict[str, Any]:
        return _openai_model(sidecar.registry.get(uri))

    # -- binary route for the SQL module ------------------------------------------------------

    @app.post(protocol.PATH)
    async def internal_embed(request: Request) -> Response:
        """The compact route of ``inference/protocol.py``; same limits as /v1/embeddings."""
        limits = sidecar.values
        query = request.query_params
        uri = query.get("model") or ""
        if not uri:
            raise _invalid("query parameter model is required, e.g. ?model=name:version", "model")
        input_type = query.get("input_type") or None
        if input_type is not None and input_type not in INPUT_TYPES:
            raise _invalid(f"input_type must be query or passage, got {input_type!r}", "input_type")
        truncate_raw = (query.get("truncate") or "true").lower()
        if truncate_raw not in ("true", "false"):
            raise _invalid(f"truncate must be true or false, got {truncate_raw!r}", "truncate")
        body = await read_body(request, limits["max_request_bytes"])
        try:
            texts = protocol.decode_request(body)
        except protocol.ProtocolError as exc:
            raise _invalid(str(exc), "input", status=400) from None
        check_texts(texts, limits["max_inputs_per_request"])
        result = await sidecar.embed(
            uri,
            texts,
            input_type=input_type,
            truncate=truncate_raw == "true",
            timeout_s=parse_timeout(request),
        )
        return Response(
            protocol.encode_response(result.vectors),
            media_type=protocol.CONTENT_TYPE,
            headers={"X-Prompt-Tokens": str(int(sum(result.token_counts)))},
        )

    # -- registry -----------------------------------------------------------------------------

    @app.post("/models")
    async def register(request: Request) -> JSONResponse:
        """Register a model: ``model_uri``, ``model_path``, ``tokenizer_path``?, ``precision``?
        (fp32|int8), ``load``? (default true: load it now, so that it can be used at once).

        201 with the metadata and the model's integer id; 200 with the same id when the URI is
        already registered with the same files; 409 when it is registered with other files.
        """
        payload = await read_json_object(request, sidecar.values["max_request_bytes"])
        uri = _required_str(payload, "model_uri")
        model_path = _required_str(payload, "model_path")
        tokenizer_path = _optional_str(payload, "tokenizer_path")
        precision = _optional_str(payload, "precision", PRECISIONS) or "fp32"
        load = _optional_bool(payload, "load", True)
        check_uri(uri)
        existing = sidecar.registry.find(uri, model_path, tokenizer_path, precision)
        if existing is None:
            source = await asyncio.to_thread(resolve_model, model_path, tokenizer_path, precision)
            metadata = source.metadata()
            metadata["files"] = await asyncio.to_thread(source.file_hashes)
            entry = sidecar.registry.add(
                uri, model_path, tokenizer_path, precision, metadata, loaded=False
            )
            created = True
        else:
            entry, created = existing, False
        if load:
            try:
                await sidecar.load(uri)
            except ModelLoadError as exc:
                if created:  # a model that cannot load is not registered
                    sidecar.registry.remove(uri)
                raise _invalid(str(exc), "model_path") from None
        log.info("registered model %s (id %s) from %s", uri, entry["id"], model_path)
        return JSONResponse(sidecar.describe(uri), status_code=201 if created else 200)

    @app.get("/models")
    async def list_models() -> dict[str, Any]:
        return {"models": [sidecar.describe(uri) for uri in sidecar.registry.uris()]}

    @app.get("/models/{uri}")
    async def model_metadata(uri: str) -> dict[str, Any]:
        return sidecar.describe(uri)

    @app.delete("/models/{uri}")
    async def unregister(uri: str) -> dict[str, Any]:
        """Unload the model if loaded, then forget it."""
        await sidecar.unload(uri, persist=False)
        entry = sidecar.registry.remove(uri)
        log.info("unregistered model %s", uri)
        return {"model_uri": uri, "id": entry["id"], "deleted": True}

    @app.post("/models/{uri}/load")
    async def load_model(uri: str) -> dict[str, Any]:
        try:
            await sidecar.load(uri)
        except ModelLoadError as exc:
            sidecar.load_errors[uri] = str(exc)
            raise _invalid(str(exc), "model_uri") from None
        return sidecar.describe(uri)

    @app.post("/models/{uri}/unload")
    async def unload_model(uri: str) -> dict[str, Any]:
        await sidecar.unload(uri)
        return sidecar.describe(uri)

    # -- settings, health, metrics ------------------------------------------------------------

    @app.get("/settings")
    async def get_settings(describe: bool = False) -> dict[str, Any]:
        """All settings as ``{key: value}``; with ``?describe=1``,
        ``{"values": {...}, "schema": [{key, type, default, min, max, choices, help, unit}]}``."""
        values = sidecar.settings.values()
        if not describe:
            return values
        return {"values": values, "schema": sidecar_settings.schema()}

    @app.put("/settings")
    async def put_settings(request: Request) -> dict[str, Any]:
        """Change some settings (a partial object; values may also be strings, as SQL sends
        them). All are validated first: one bad key and nothing changes (422, with
        ``error.details`` naming each bad key). Returns all values; applied at once."""
        payload = await read_json_object(request, sidecar.values["max_request_bytes"])
        return await sidecar.update_settings(payload)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness and readiness; never needs the token. ``status`` is ``degraded`` while a
        model that should be loaded failed to load."""
        models = []
        for uri in sidecar.registry.uris():
            item: dict[str, Any] = {"model_uri": uri, "loaded": uri in sidecar.models}
            if uri in sidecar.load_errors:
                item["error"] = sidecar.load_errors[uri]
            models.append(item)
        status = "degraded" if sidecar.load_errors else "ok"
        # The process's resident memory: what its loaded models (and the rest) occupy.
        rss_mb = round(psutil.Process().memory_info().rss / 2**20, 1)
        return {"status": status, "models": models, "version": VERSION, "memory_rss_mb": rss_mb}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(sidecar.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    return app


def serve(host: str | None = None, port: int | None = None, uds: str | None = None) -> None:
    """Run the sidecar with uvicorn on ``host:port`` (defaults: ``INFERENCE_HOST`` or
    127.0.0.1, ``INFERENCE_PORT`` or 8090), or on the Unix socket ``uds``."""
    import uvicorn

    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    app = create_app()
    host = host or env.env_str("INFERENCE_HOST", DEFAULT_HOST)
    port = port or env.env_int("INFERENCE_PORT", DEFAULT_PORT)
    where = f"unix:{uds}" if uds else f"http://{host}:{port}"
    log.info("inference sidecar %s listening on %s (state in %s)", VERSION, where, env.var_dir())
    uvicorn.run(app, host=host, port=port, uds=uds, access_log=False, timeout_graceful_shutdown=10)
