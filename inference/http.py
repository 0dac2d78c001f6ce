"""The sidecar's HTTP concerns: error responses, reading and parsing requests, the gate.

Every error is ``{"error": {"message", "type", "param", "code"}}`` (plus ``details`` for a
settings update naming each bad key) with a code of ``protocol.ErrorCode``. ``api_error`` maps
the service's and the registry's refusals to their status and code, in one table.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference import protocol
from inference.metrics import Metrics
from inference.protocol import ErrorCode
from inference.registry import (
    InvalidModelURI,
    ModelPathError,
    RegistrationConflict,
    RegistryError,
    UnknownModel,
    check_uri,
)
from inference.service import (
    DimensionsNotSupported,
    EmbedTimeout,
    InputTooLong,
    ModelLoadError,
    ModelNotLoaded,
    ServiceError,
    SettingsRejected,
    WrongModelKind,
)

log = logging.getLogger("inference.sidecar")

INPUT_TYPES = ("query", "passage")
ENCODING_FORMATS = ("float", "base64")

_ERROR_TYPES = {
    401: "authentication_error",
    500: "server_error",
    504: "timeout_error",
}


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


def error_response(
    error: APIError, metrics: Metrics, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The JSON answer of ``error``, counted in the error metrics."""
    metrics.observe_error(error.code)
    return JSONResponse(error_body(error), status_code=error.status, headers=headers)


Refusal = APIError | ServiceError | RegistryError


def refusal_response(exc: Refusal, metrics: Metrics) -> JSONResponse:
    """The JSON answer of a route's refusal: an APIError as it is, the service's and the
    registry's through ``api_error``."""
    return error_response(exc if isinstance(exc, APIError) else api_error(exc), metrics)


def invalid(message: str, param: str | None = None, status: int = 422) -> APIError:
    return APIError(status, ErrorCode.INVALID_INPUT, message, param=param)


# Status and code of each refusal of the service, the first matching class wins.
_SERVICE_ERRORS: tuple[tuple[type[ServiceError], int, str], ...] = (
    (ModelNotLoaded, 409, ErrorCode.MODEL_NOT_LOADED),
    (InputTooLong, 413, ErrorCode.INPUT_TOO_LONG),
    (EmbedTimeout, 504, ErrorCode.TIMEOUT),
    (DimensionsNotSupported, 400, ErrorCode.INVALID_INPUT),
    (WrongModelKind, 400, ErrorCode.WRONG_MODEL_KIND),
    (ModelLoadError, 422, ErrorCode.INVALID_INPUT),
    (SettingsRejected, 422, ErrorCode.INVALID_INPUT),
)


def api_error(exc: ServiceError | RegistryError) -> APIError:
    """The error response for a refusal of the service or the registry."""
    if isinstance(exc, ServiceError):
        status, code = next(
            ((s, c) for kind, s, c in _SERVICE_ERRORS if isinstance(exc, kind)),
            (400, ErrorCode.INVALID_INPUT),
        )
        return APIError(status, code, exc.message, param=exc.param, details=exc.details)
    if isinstance(exc, UnknownModel):
        return APIError(404, ErrorCode.MODEL_NOT_FOUND, str(exc), param="model")
    if isinstance(exc, RegistrationConflict):
        return APIError(409, ErrorCode.INVALID_INPUT, str(exc), param="model_path")
    if isinstance(exc, InvalidModelURI):
        return APIError(400, ErrorCode.INVALID_INPUT, str(exc), param="model_uri")
    if isinstance(exc, ModelPathError):
        return APIError(400, ErrorCode.INVALID_INPUT, str(exc), param="model_path")
    return APIError(400, ErrorCode.INVALID_INPUT, str(exc))


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Answer every error raised in a route with the JSON error body."""

    @app.exception_handler(APIError)
    @app.exception_handler(ServiceError)
    @app.exception_handler(RegistryError)
    async def refused(request: Request, exc: Refusal) -> JSONResponse:
        return refusal_response(exc, metrics)

    @app.exception_handler(StarletteHTTPException)
    async def http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = (
                f"no route {request.method} {request.url.path}; the routes are listed at /docs"
            )
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return error_response(APIError(exc.status_code, ErrorCode.INVALID_INPUT, message), metrics)

    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(part) for part in e['loc'] if part not in ('query', 'path'))}: "
            f"{e['msg']}"
            for e in exc.errors()
        ]
        first = exc.errors()[0]["loc"][-1] if exc.errors() else None
        error = invalid("; ".join(problems), str(first) if first is not None else None)
        return error_response(error, metrics)


# -- reading requests -------------------------------------------------------------------------


def _too_large(size: int, limit: int) -> APIError:
    return APIError(
        413,
        ErrorCode.REQUEST_TOO_LARGE,
        f"request body is {size} bytes, more than max_request_bytes ({limit}); send fewer or "
        "shorter inputs per request, or raise the max_request_bytes setting",
        param="input",
    )


def _check_declared_size(declared: str | None, limit: int) -> None:
    """Refuse a body whose ``Content-Length`` is not a number (400) or exceeds ``limit`` (413)."""
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError:
        raise invalid(f"Content-Length {declared!r} is not a number", status=400) from None
    if size > limit:
        raise _too_large(size, limit)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    _check_declared_size(request.headers.get("content-length"), limit)
    return await _receive_body(request.receive, limit)


async def _receive_body(receive: Receive, limit: int) -> bytes:
    """The body from the ASGI messages of ``receive``, refused with 413 as soon as it exceeds
    ``limit`` bytes (the declared size is ``_check_declared_size``'s to check)."""
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):
        body = message.get("body", b"")  # the whole body in one message, as a lone query's is
        if len(body) > limit:
            raise _too_large(len(body), limit)
        return body
    parts = bytearray()
    while True:
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        parts += message.get("body", b"")
        if len(parts) > limit:
            raise _too_large(len(parts), limit)
        if not message.get("more_body", False):
            return bytes(parts)
        message = await receive()


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    body = await read_body(request, limit)
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid(f"request body is not valid JSON: {exc}", status=400) from None
    except RecursionError:
        raise invalid(
            "request body nests arrays or objects too deeply to read; no request of this API "
            "nests more than a few levels",
            status=400,
        ) from None
    if not isinstance(payload, dict):
        raise invalid(f"request body must be a JSON object, got {type(payload).__name__}")
    return payload


def json_type(value: Any) -> str:
    """How a JSON value's type reads in an error message: "a string", "an array", ..."""
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


def optional_str(payload: Mapping[str, Any], key: str, choices: tuple[str, ...] = ()) -> str | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or (choices and value not in choices):
        allowed = " or ".join(repr(c) for c in choices) if choices else "a string"
        raise invalid(f"{key} must be {allowed}, got {json_type(value)} {value!r}", key)
    return value


def required_str(payload: Mapping[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value:
        got = "nothing" if key not in payload else f"{json_type(value)} {value!r}"
        raise invalid(f"{key} is required and must be a non-empty string, got {got}", key)
    return value


def optional_bool(payload: Mapping[str, Any], key: str, default: bool) -> bool:
    value = payload.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(f"{key} must be true or false, got {json_type(value)} {value!r}", key)
    return value


def check_texts(texts: list[str], limit: int, *, single: bool = False) -> None:
    """Refuse an empty list, too many inputs and empty strings, naming the index."""
    if not texts:
        raise invalid("input is an empty list; send at least one string", "input", status=400)
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
            raise invalid(
                f"{where} is an empty string; every input needs some text to embed",
                "input",
                status=400,
            )


def parse_timeout(request: Request) -> float | None:
    """Seconds from ``X-Timeout-Ms``; None when absent or 0 (no limit)."""
    return _timeout_seconds(request.headers.get("x-timeout-ms"))


def _timeout_seconds(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        millis = int(raw)
    except ValueError:
        millis = -1
    if millis < 0:
        raise invalid(
            f"X-Timeout-Ms must be a whole number of milliseconds (0 for no limit), got {raw!r}",
            "X-Timeout-Ms",
            status=400,
        )
    return millis / 1000 if millis else None


@dataclass(frozen=True)
class EmbeddingsRequest:
    """An embedding request of either route, checked against the request limits."""

    model: str
    texts: list[str]
    input_type: str | None
    truncate: bool
    timeout_s: float | None
    encoding_format: str = "float"  # JSON route: "float" or "base64"
    dimensions: int | None = None  # JSON route only


async def read_embeddings_request(request: Request, limits: Mapping[str, Any]) -> EmbeddingsRequest:
    """The body of ``POST /v1/embeddings``; see the route for its fields."""
    payload = await read_json_object(request, limits["max_request_bytes"])
    uri = required_str(payload, "model")
    raw = payload.get("input")
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list):
        texts = raw
        bad = next((i for i, t in enumerate(raw) if not isinstance(t, str)), None)
        if bad is not None:
            raise invalid(
                f"input[{bad}] is {json_type(raw[bad])}, not a string; send text (token "
                "arrays are not accepted)",
                "input",
            )
    else:
        got = "nothing" if "input" not in payload else json_type(raw)
        raise invalid(f"input must be a string or a list of strings, got {got}", "input")
    check_texts(texts, limits["max_inputs_per_request"], single=isinstance(raw, str))
    encoding = optional_str(payload, "encoding_format", ENCODING_FORMATS) or "float"
    input_type = optional_str(payload, "input_type", INPUT_TYPES)
    truncate = optional_bool(payload, "truncate", True)
    optional_str(payload, "user")
    dimensions = payload.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool)):
        raise invalid(
            f"dimensions must be an integer, got {json_type(dimensions)} {dimensions!r}",
            "dimensions",
        )
    return EmbeddingsRequest(
        model=uri,
        texts=texts,
        input_type=input_type,
        truncate=truncate,
        timeout_s=parse_timeout(request),
        encoding_format=encoding,
        dimensions=dimensions,
    )


@dataclass(frozen=True)
class ChunksRequest:
    model: str
    texts: list[str]
    size: int
    overlap: int
    input_type: str | None


def _count(payload: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = payload.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        got = "nothing" if value is None else f"{json_type(value)} {value!r}"
        raise invalid(f"{key} must be a whole number of tokens (0 or more), got {got}", key)
    return value


async def read_chunks_request(request: Request, limits: Mapping[str, Any]) -> ChunksRequest:
    """The body of ``POST /chunks``: ``model``, ``input`` (a list of strings), ``size`` and
    ``overlap`` (tokens), ``input_type``."""
    payload = await read_json_object(request, limits["max_request_bytes"])
    uri = required_str(payload, "model")
    texts = payload.get("input")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise invalid("input must be a list of strings", "input")
    check_texts(texts, limits["max_inputs_per_request"])
    return ChunksRequest(
        model=uri,
        texts=texts,
        size=_count(payload, "size"),
        overlap=_count(payload, "overlap", 0),
        input_type=optional_str(payload, "input_type", INPUT_TYPES),
    )


async def read_binary_request(
    scope: Scope, receive: Receive, limits: Mapping[str, Any]
) -> EmbeddingsRequest:
    """A request of the binary route of ``inference/protocol.py``: the query, then the body.

    Read from the ASGI scope and messages themselves, with what Starlette's ``Request`` would
    give (the last of repeated query parameters, the first of repeated headers): the lone
    query from SQL pays for little besides its model run."""
    query, declared_size, timeout_raw = _binary_query(scope)
    uri = query.get("model") or ""
    if not uri:
        raise invalid("query parameter model is required, e.g. ?model=name:version", "model")
    input_type = query.get("input_type") or None
    if input_type is not None and input_type not in INPUT_TYPES:
        raise invalid(f"input_type must be query or passage, got {input_type!r}", "input_type")
    truncate = _query_bool(query, "truncate", "true")
    texts = await _binary_texts(receive, declared_size, limits)
    check_texts(texts, limits["max_inputs_per_request"])
    return EmbeddingsRequest(
        model=uri,
        texts=texts,
        input_type=input_type,
        truncate=truncate,
        timeout_s=_timeout_seconds(timeout_raw),
    )


@dataclass(frozen=True)
class RerankRequest:
    """A rerank request of any route (Cohere's, text-embeddings-inference's, the binary one),
    checked against the request limits; ``model`` None: the setting default_rerank_model."""

    model: str | None
    query: str
    documents: list[str]
    top_n: int | None = None
    return_documents: bool = False
    raw: bool = False
    truncate: bool = True
    timeout_s: float | None = None


def _check_rerank(query: Any, documents: list[str], limit: int, key: str) -> str:
    """Refuse a query that is not a non-empty string, no documents, or too many."""
    if not isinstance(query, str) or not query:
        got = json_type(query) + (f" {query!r}" if isinstance(query, str) else "")
        raise invalid(f"query is required and must be a non-empty string, got {got}", "query")
    if not documents:
        raise invalid(f"{key} is an empty list; send at least one document", key, status=400)
    if len(documents) > limit:
        raise APIError(
            413,
            ErrorCode.TOO_MANY_INPUTS,
            f"{len(documents)} documents in one request, more than max_inputs_per_request "
            f"({limit}); split the request, or raise the max_inputs_per_request setting",
            param=key,
        )
    return query


def _documents(payload: Mapping[str, Any], key: str) -> list[str]:
    """``key`` as a list of strings; Cohere's clients may also send ``{"text": ...}`` objects."""
    raw = payload.get(key)
    if not isinstance(raw, list):
        got = "nothing" if key not in payload else json_type(raw)
        raise invalid(f"{key} must be a list of strings, got {got}", key)
    documents = []
    for index, item in enumerate(raw):
        if isinstance(item, Mapping) and isinstance(item.get("text"), str):
            item = item["text"]
        if not isinstance(item, str):
            raise invalid(
                f"{key}[{index}] is {json_type(item)}, not a string (or an object with a "
                "string text)",
                key,
            )
        documents.append(item)
    return documents


# Embedding options that mean nothing to a cross-encoder: refused rather than ignored, so that a
# caller who meant an embedder learns it at once.
_EMBEDDING_ONLY = {
    "input_type": "prefixes (input_type) belong to embedding models; a reranker reads the query "
    "and the document as a pair, as it was trained",
    "dimensions": "dimensions (Matryoshka truncation) belong to embedding models; a reranker "
    "gives one score per document",
    "encoding_format": "encoding_format belongs to embeddings; a reranker gives one score per "
    "document",
}


def _refuse_embedding_options(payload: Mapping[str, Any]) -> None:
    for key, reason in _EMBEDDING_ONLY.items():
        if key in payload:
            raise invalid(f"{reason}; remove {key} from the rerank request", key, status=400)


def _top_n(payload: Mapping[str, Any]) -> int | None:
    value = payload.get("top_n")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise invalid(
            f"top_n must be a whole number of results (1 or more), got {json_type(value)} "
            f"{value!r}",
            "top_n",
        )
    return value


async def read_cohere_rerank(request: Request, limits: Mapping[str, Any]) -> RerankRequest:
    """The body of ``POST /v1/rerank`` and ``/v2/rerank`` (Cohere's shape): ``model``?,
    ``query``, ``documents``, ``top_n``?, ``return_documents``? (default false)."""
    payload = await read_json_object(request, limits["max_request_bytes"])
    _refuse_embedding_options(payload)
    documents = _documents(payload, "documents")
    return RerankRequest(
        model=optional_str(payload, "model") or None,
        query=_check_rerank(
            payload.get("query"), documents, limits["max_inputs_per_request"], "documents"
        ),
        documents=documents,
        top_n=_top_n(payload),
        return_documents=optional_bool(payload, "return_documents", False),
        timeout_s=parse_timeout(request),
    )


async def read_tei_rerank(request: Request, limits: Mapping[str, Any]) -> RerankRequest:
    """The body of ``POST /rerank`` (text-embeddings-inference's shape): ``query``, ``texts``,
    ``raw_scores``? and ``return_text``? (default false), ``truncate``? (default true), and
    ``model``?, an extension of ours."""
    payload = await read_json_object(request, limits["max_request_bytes"])
    _refuse_embedding_options(payload)
    texts = _documents(payload, "texts")
    # Only "right" (the end of the longer text goes first) is how CrossEncoder cuts a pair.
    optional_str(payload, "truncation_direction", ("right", "Right"))
    return RerankRequest(
        model=optional_str(payload, "model") or None,
        query=_check_rerank(payload.get("query"), texts, limits["max_inputs_per_request"], "texts"),
        documents=texts,
        return_documents=optional_bool(payload, "return_text", False),
        raw=optional_bool(payload, "raw_scores", False),
        truncate=optional_bool(payload, "truncate", True),
        timeout_s=parse_timeout(request),
    )


def _binary_query(scope: Scope) -> tuple[dict[str, str], str | None, str | None]:
    """The query parameters (the last of repeated ones), Content-Length and X-Timeout-Ms (the
    first of repeated headers), as Starlette's ``Request`` would give them."""
    query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
    declared_size = timeout_raw = None
    for name, value in scope["headers"]:
        if name == b"content-length" and declared_size is None:
            declared_size = value.decode("latin-1")
        elif name == b"x-timeout-ms" and timeout_raw is None:
            timeout_raw = value.decode("latin-1")
    return query, declared_size, timeout_raw


async def _binary_texts(
    receive: Receive, declared_size: str | None, limits: Mapping[str, Any]
) -> list[str]:
    """The texts of a binary route's body, read within ``max_request_bytes``."""
    limit = limits["max_request_bytes"]
    _check_declared_size(declared_size, limit)
    body = await _receive_body(receive, limit)
    try:
        return protocol.decode_request(body)
    except protocol.ProtocolError as exc:
        raise invalid(str(exc), "input", status=400) from None


def _query_bool(query: Mapping[str, str], key: str, default: str) -> bool:
    raw = (query.get(key) or default).lower()
    if raw not in ("true", "false"):
        raise invalid(f"{key} must be true or false, got {raw!r}", key)
    return raw == "true"


async def read_binary_rerank(
    scope: Scope, receive: Receive, limits: Mapping[str, Any]
) -> RerankRequest:
    """A request of the binary rerank route (``inference/protocol.py``): the query text first,
    then the documents."""
    query, declared_size, timeout_raw = _binary_query(scope)
    raw = _query_bool(query, "raw", "false")
    texts = await _binary_texts(receive, declared_size, limits)
    if not texts:
        raise invalid("the body holds no query; send the query, then the documents", "query", 400)
    return RerankRequest(
        model=query.get("model") or None,
        query=_check_rerank(texts[0], texts[1:], limits["max_inputs_per_request"], "documents"),
        documents=texts[1:],
        raw=raw,
        timeout_s=_timeout_seconds(timeout_raw),
    )


# -- the gate ---------------------------------------------------------------------------------


# Paths whose next segment is a model URI.
_MODEL_PATH_PREFIXES = (b"/models/", b"/v1/models/")


def model_segment_refusal(scope: Scope) -> InvalidModelURI | None:
    """The refusal of a model URI holding a '/' in a model route's path, else None.

    No model URI holds one (``catalog.parse_uri``), but a client that escapes a URI sends it as
    ``%2F``, which routing, on the decoded path, would take for a separator: another route's
    405, a redirect or "no route" instead of saying what is wrong with the URI."""
    raw = scope.get("raw_path") or b""
    for prefix in _MODEL_PATH_PREFIXES:
        if raw.startswith(prefix):
            segment = raw[len(prefix) :].split(b"/", 1)[0]
            if b"%2f" not in segment.lower():
                return None
            try:
                check_uri(unquote(segment.decode("latin-1")))
            except InvalidModelURI as refusal:
                return refusal
    return None


# A direct route's handler: from the request's scope and receive channel to its response.
DirectHandler = Callable[[Scope, Receive], Awaitable[ASGIApp]]


@dataclass(frozen=True)
class _DirectRoute:
    path: str


PROCESS_TIME_HEADER = "X-Process-Time-Ms"
_PROCESS_TIME = PROCESS_TIME_HEADER.lower().encode()


class Gate:
    """Around every HTTP request: the bearer token, request metrics, the last-resort 500, and
    the ``X-Process-Time-Ms`` header (from the request reaching the gate to the response
    starting, in milliseconds).

    Written as plain ASGI so that it adds next to nothing to the embedding routes. Routes in
    ``direct`` (``{(method, path): handler}``) are answered here, without FastAPI's routing and
    parameter machinery: the SQL module's binary route, where a lone query should pay for the
    model and little else. A handler takes the request's scope and receive channel and returns
    the response; the refusals it raises get the same JSON error bodies as every other route.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        token: str,
        direct: Mapping[tuple[str, str], DirectHandler] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.token = token.encode()
        # Not copied: the app fills it in as it declares its routes, before the first request.
        self.direct = direct if direct is not None else {}

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credential = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    credential.strip(), self.token
                )
        return False

    async def _answer_direct(
        self, handler: DirectHandler, scope: Scope, receive: Receive, send: Send
    ) -> None:
        try:
            response = await handler(scope, receive)
        except (APIError, ServiceError, RegistryError) as refusal:
            response = refusal_response(refusal, self.metrics)
        await response(scope, receive, send)

    async def _send_error(
        self, scope: Scope, receive: Receive, send: Send, error: APIError
    ) -> None:
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        await error_response(error, self.metrics, headers)(scope, receive, send)

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
                elapsed_ms = f"{(time.perf_counter() - start) * 1000:.2f}".encode()
                message["headers"] = [*message.get("headers", ()), (_PROCESS_TIME, elapsed_ms)]
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
            elif (refusal := model_segment_refusal(scope)) is not None:
                await self._send_error(scope, receive, send_and_watch, api_error(refusal))
            elif (handler := self.direct.get((scope["method"], scope["path"]))) is not None:
                scope["route"] = _DirectRoute(scope["path"])  # the metrics' route label
                await self._answer_direct(handler, scope, receive, send_and_watch)
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
            self.metrics.observe_request(label, scope["method"], status or 500, elapsed)


class DirectFirst:
    """The sidecar's ASGI app: a request for one of ``gate``'s direct routes goes straight to
    the gate, ahead of the FastAPI app's own layers (its error, telemetry and body-limit
    middleware, whose work the gate and the direct handlers do for these routes themselves);
    every other request, and the lifespan, goes to ``app``, whose middleware holds a gate of
    its own for its routes."""

    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["method"], scope["path"]) in self.gate.direct:
            await self.gate(scope, receive, send)
        else:
            await self.app(scope, receive, send)
