"""The inference sidecar: an HTTP service that embeds text, and reranks documents, with the
registered ONNX models.

Routes (docs/architecture.md "Sidecar HTTP"):

* ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /v1/models/{uri}``: OpenAI-compatible.
* ``POST /v1/rerank`` and ``/v2/rerank`` (Cohere's shape), ``POST /rerank``
  (text-embeddings-inference's): reranking with a cross-encoder.
* ``POST /models``, ``GET /models``, ``GET|DELETE /models/{uri}``, ``POST /models/{uri}/load``,
  ``POST /models/{uri}/unload``: the model registry.
* ``GET /settings`` (``?describe=1`` adds the schema), ``PUT /settings``: live settings.
* ``GET /health`` (never needs the token), ``GET /metrics`` (Prometheus text).
* ``POST /internal/embed``, ``POST /internal/rerank``: the binary routes of
  ``inference/protocol.py`` for the SQL module.

Each route parses its request (``inference/http.py``), calls one method of the service
(``inference/service.py``) and answers. Every error is ``{"error": {"message", "type",
"param", "code"}}`` with a code of ``protocol.ErrorCode`` (plus ``timeout`` for a request that
ran out of its ``X-Timeout-Ms``). The embedding and rerank routes accept ``X-Timeout-Ms``: the
milliseconds the caller will wait; 0 or absent means no limit (as with PostgreSQL's timeouts).

Every response carries ``X-Process-Time-Ms``: the milliseconds from the request reaching the
sidecar to its response starting (reading, queueing, running the model, serialising).

Request limits come from the settings and apply as soon as they change: a body larger than
``max_request_bytes`` and more inputs than ``max_inputs_per_request`` get 413. An empty input
list and an empty string are refused with 400 (the message names the index): an empty text has
no meaning to embed, and OpenAI's API refuses it too.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope

from inference import config as env
from inference import protocol
from inference.engine import EmbedResult
from inference.http import (
    APIError,
    DirectFirst,
    ErrorCode,
    Gate,
    RerankRequest,
    install_error_handlers,
    optional_bool,
    optional_str,
    read_binary_request,
    read_binary_rerank,
    read_chunks_request,
    read_cohere_rerank,
    read_embeddings_request,
    read_json_object,
    read_tei_rerank,
    required_str,
)
from inference.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from inference.registry import PRECISIONS
from inference.service import VERSION, Sidecar
from inference.transport import HTTPProtocol

log = logging.getLogger("inference.sidecar")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8090


# -- answers ----------------------------------------------------------------------------------


def embeddings_body(uri: str, result: EmbedResult, encoding_format: str) -> bytes:
    """The OpenAI-compatible answer of ``POST /v1/embeddings``, serialised.

    Each ``data[]`` item also says its input's ``prompt_tokens`` (special tokens and prefix
    included, after truncation) and whether it was ``truncated`` to the model's max tokens:
    fields the OpenAI clients ignore.
    """
    vectors = np.ascontiguousarray(result.vectors, dtype=np.float32)
    if encoding_format == "base64":
        rows: Any = [
            base64.b64encode(row.astype("<f4", copy=False).tobytes()).decode("ascii")
            for row in vectors
        ]
    else:
        # Each float as the shortest decimal that reads back as the same float32, written by
        # orjson straight from the array: a tenth of the time of json over Python floats, and
        # about half the bytes of their float64 digits.
        rows = vectors
    tokens = int(sum(result.token_counts))
    body = {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": i,
                "embedding": row,
                "prompt_tokens": count,
                "truncated": cut,
            }
            for i, (row, count, cut) in enumerate(
                zip(rows, result.token_counts, result.truncated, strict=True)
            )
        ],
        "model": uri,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _created(registered_at: str) -> int:
    try:
        return int(datetime.fromisoformat(registered_at.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def openai_model(facts: Mapping[str, Any]) -> dict[str, Any]:
    """An item of ``GET /v1/models``: OpenAI's fields, then the model's facts (which OpenAI
    clients ignore)."""
    item = {
        "id": facts["model_uri"],
        "object": "model",
        "created": _created(facts["registered_at"]),
        "owned_by": "local",
    }
    item.update((k, v) for k, v in facts.items() if k not in ("model_uri", "registered_at"))
    return item


# -- the app ----------------------------------------------------------------------------------


def create_app(var_dir: Path | None = None, token: str | None = None) -> DirectFirst:
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
        # Its clients are programs, the SQL module first, which take a redirect for an error
        # they cannot read: a path that matches no route is answered 404 as it is.
        redirect_slashes=False,
    )
    app.state.sidecar = sidecar

    # Routes a gate answers itself, without FastAPI's routing, parameter machinery or
    # middleware (see ``Gate`` and ``DirectFirst``): the embedding routes, where a request
    # should pay for the model and little else. They stay declared below as well, for the API's
    # documentation. The gate in FastAPI's middleware guards every other route.
    direct: dict[tuple[str, str], Any] = {}
    gate_options = {
        "metrics": sidecar.metrics,
        "token": env.inference_token() if token is None else token,
        "direct": direct,
    }
    app.add_middleware(Gate, **gate_options)
    install_error_handlers(app, sidecar.metrics)

    # -- OpenAI-compatible --------------------------------------------------------------------

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        """OpenAI-compatible embeddings.

        Body: ``model``, ``input`` (a string or a list of strings; no empty list, no empty
        string: 400 naming the index), ``encoding_format`` (``float``, or ``base64`` of
        float32 little-endian), ``dimensions`` (keep the first N and renormalise; only a length
        the model declares in ``matryoshka_dimensions``, or its full one), ``user`` (ignored);
        extras ``input_type`` (``query``/``passage``: the model's prefix) and ``truncate``
        (default true; false refuses an over-long input with 413).
        """
        asked = await read_embeddings_request(request, sidecar.values)
        result = await sidecar.embed(
            asked.model,
            asked.texts,
            input_type=asked.input_type,
            truncate=asked.truncate,
            timeout_s=asked.timeout_s,
            dimensions=asked.dimensions,
        )
        return Response(
            embeddings_body(asked.model, result, asked.encoding_format),
            media_type="application/json",
        )

    @app.get("/v1/models")
    async def openai_models() -> dict[str, Any]:
        """OpenAI-compatible list of the registered models; each item also gives the model's
        ``dimensions``, ``max_tokens``, ``pooling``, ``normalize``, ``prefixes``,
        ``matryoshka_dimensions``, ``license`` (``{name, url}`` or null), ``precision`` and
        whether it is ``loaded``."""
        return {"object": "list", "data": [openai_model(f) for f in sidecar.all_model_facts()]}

    @app.get("/v1/models/{uri}")
    async def openai_model_of(uri: str) -> dict[str, Any]:
        return openai_model(sidecar.model_facts(uri))

    # -- binary route for the SQL module ------------------------------------------------------

    async def binary_embed(scope: Scope, receive: Receive) -> Response:
        """The binary route, read from the ASGI scope and messages: what a lone query from SQL
        pays for besides its model run is kept small (see ``read_binary_request``)."""
        asked = await read_binary_request(scope, receive, sidecar.values)
        result = await sidecar.embed(
            asked.model,
            asked.texts,
            input_type=asked.input_type,
            truncate=asked.truncate,
            timeout_s=asked.timeout_s,
        )
        return Response(
            protocol.encode_response(result.vectors),
            media_type=protocol.CONTENT_TYPE,
            headers={"X-Prompt-Tokens": str(int(sum(result.token_counts)))},
        )

    @app.post(protocol.PATH)
    async def internal_embed(request: Request) -> Response:
        """The compact route of ``inference/protocol.py``; same limits as /v1/embeddings."""
        return await binary_embed(request.scope, request.receive)

    async def direct_embeddings(scope: Scope, receive: Receive) -> Response:
        return await embeddings(Request(scope, receive))

    direct[("POST", "/v1/embeddings")] = direct_embeddings
    direct[("POST", protocol.PATH)] = binary_embed

    # -- reranking ---------------------------------------------------------------------------

    async def rerank(asked: RerankRequest) -> tuple[str, np.ndarray, np.ndarray]:
        """The model, the scores in document order, and the documents' order best first."""
        uri, result = await sidecar.rerank(
            asked.model, asked.query, asked.documents, raw=asked.raw, timeout_s=asked.timeout_s
        )
        if not asked.truncate and any(result.truncated):
            index = result.truncated.index(True)
            raise APIError(
                413,
                ErrorCode.INPUT_TOO_LONG,
                f"texts[{index}] with the query is longer than model {uri}'s limit of "
                f"{sidecar.model_facts(uri)['max_tokens']} tokens per pair; shorten it, or send "
                "truncate=true to cut it as the model was trained to be cut",
                param="texts",
            )
        # Best first; equal scores keep the documents' order.
        order = np.argsort(-result.scores, kind="stable")
        return uri, result.scores, order

    async def cohere_rerank(request: Request, version: str) -> dict[str, Any]:
        asked = await read_cohere_rerank(request, sidecar.values)
        uri, scores, order = await rerank(asked)
        results = []
        for index in order[: asked.top_n]:
            item: dict[str, Any] = {"index": int(index), "relevance_score": float(scores[index])}
            if asked.return_documents:
                item["document"] = {"text": asked.documents[index]}
            results.append(item)
        return {
            "id": str(uuid.uuid4()),
            "model": uri,
            "results": results,
            "meta": {
                "api_version": {"version": version},
                "billed_units": {"search_units": 1},
            },
        }

    @app.post("/v1/rerank")
    async def rerank_v1(request: Request) -> dict[str, Any]:
        """Cohere-compatible reranking (its v1 and v2 shapes are alike here).

        Body: ``model`` (a reranker; omitted: the setting ``default_rerank_model``),
        ``query``, ``documents`` (strings, or objects with a ``text``), ``top_n`` (how many
        results; default all), ``return_documents`` (default false). Answer: ``results``, best
        first: ``index`` (into documents), ``relevance_score`` (the model's activation of its
        logit: sigmoid, in [0, 1]) and, when asked, ``document: {text}``."""
        return await cohere_rerank(request, "1")

    @app.post("/v2/rerank")
    async def rerank_v2(request: Request) -> dict[str, Any]:
        """Cohere-compatible reranking, v2 path; as ``/v1/rerank``."""
        return await cohere_rerank(request, "2")

    @app.post("/rerank")
    async def rerank_tei(request: Request) -> list[dict[str, Any]]:
        """text-embeddings-inference-compatible reranking.

        Body: ``query``, ``texts``, ``raw_scores`` (the logits instead of the activation;
        default false), ``return_text`` (default false), ``truncate`` (default true; false
        refuses a pair longer than the model's limit with 413), ``model`` (ours; default the
        setting ``default_rerank_model``). Answer: a list, best first, of ``index``, ``score``
        and, when asked, ``text``."""
        asked = await read_tei_rerank(request, sidecar.values)
        _uri, scores, order = await rerank(asked)
        return [
            {"index": int(i), "score": float(scores[i])}
            | ({"text": asked.documents[i]} if asked.return_documents else {})
            for i in order
        ]

    async def binary_rerank(scope: Scope, receive: Receive) -> Response:
        asked = await read_binary_rerank(scope, receive, sidecar.values)
        uri, result = await sidecar.rerank(
            asked.model, asked.query, asked.documents, raw=asked.raw, timeout_s=asked.timeout_s
        )
        return Response(
            protocol.encode_scores(result.scores),
            media_type=protocol.CONTENT_TYPE,
            headers={"X-Model": uri, "X-Prompt-Tokens": str(int(sum(result.token_counts)))},
        )

    @app.post(protocol.RERANK_PATH)
    async def internal_rerank(request: Request) -> Response:
        """The compact rerank route of ``inference/protocol.py``, which SQL rank() calls."""
        return await binary_rerank(request.scope, request.receive)

    direct[("POST", protocol.RERANK_PATH)] = binary_rerank

    # -- chunking ----------------------------------------------------------------------------

    @app.post("/chunks")
    async def chunks(request: Request) -> dict[str, Any]:
        """Split texts by the model's own tokens into chunks that embed without being cut.

        Body: ``model``, ``input`` (a list of strings), ``size`` (tokens per chunk, at most the
        model's max tokens less its special tokens and the ``input_type``'s prefix: 400 says
        the limit), ``overlap`` (tokens shared with the chunk before, less than ``size``),
        ``input_type``. Answer: ``data``: per input, ``index`` and ``chunks``, each
        ``{text, tokens, start}``: slices of the input in order, ``start`` their offset in it
        (characters)."""
        asked = await read_chunks_request(request, sidecar.values)
        split = await sidecar.chunk(
            asked.model,
            asked.texts,
            size=asked.size,
            overlap=asked.overlap,
            input_type=asked.input_type,
        )
        return {
            "model": asked.model,
            "data": [
                {
                    "index": i,
                    "chunks": [
                        {"text": c.text, "tokens": c.tokens, "start": c.start} for c in parts
                    ],
                }
                for i, parts in enumerate(split)
            ],
        }

    # -- registry -----------------------------------------------------------------------------

    @app.post("/models")
    async def register(request: Request) -> JSONResponse:
        """Register a model: ``model_uri``, ``model_path``, ``tokenizer_path``?, ``precision``?
        (fp32|int8), ``load``? (default true: load it now, so that it can be used at once).

        201 with the metadata and the model's integer id; 200 with the same id when the URI is
        already registered with the same files; 409 when it is registered with other files.
        """
        payload = await read_json_object(request, sidecar.values["max_request_bytes"])
        described, created = await sidecar.register(
            required_str(payload, "model_uri"),
            required_str(payload, "model_path"),
            optional_str(payload, "tokenizer_path"),
            optional_str(payload, "precision", PRECISIONS) or "fp32",
            load=optional_bool(payload, "load", True),
        )
        return JSONResponse(described, status_code=201 if created else 200)

    @app.get("/models")
    async def list_models() -> dict[str, Any]:
        return {"models": sidecar.describe_all()}

    @app.get("/models/{uri}")
    async def model_metadata(uri: str) -> dict[str, Any]:
        return sidecar.describe(uri)

    @app.delete("/models/{uri}")
    async def unregister(uri: str) -> dict[str, Any]:
        """Unload the model if loaded, then forget it."""
        entry = await sidecar.unregister(uri)
        return {"model_uri": uri, "id": entry["id"], "deleted": True}

    @app.post("/models/{uri}/load")
    async def load_model(uri: str) -> dict[str, Any]:
        return await sidecar.load(uri)

    @app.post("/models/{uri}/unload")
    async def unload_model(uri: str) -> dict[str, Any]:
        return await sidecar.unload(uri)

    # -- settings, health, metrics ------------------------------------------------------------

    @app.get("/settings")
    async def get_settings(describe: bool = False) -> dict[str, Any]:
        """All settings as ``{key: value}``; with ``?describe=1``,
        ``{"values": {...}, "schema": [{key, type, default, min, max, choices, help, unit}]}``."""
        return sidecar.settings_described() if describe else sidecar.settings.values()

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
        return sidecar.health()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(sidecar.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    return DirectFirst(app, Gate(app, **gate_options))


class ExposureError(SystemExit):
    """The sidecar would listen beyond this machine without a token."""


def check_exposure(host: str, token: str) -> None:
    """Refuse to listen on an address other machines can reach without ``INFERENCE_TOKEN``:
    anyone who reaches the port could otherwise load, unload and use the models."""
    if token:
        return
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise ExposureError(f"cannot resolve the address to listen on, {host!r}: {exc}") from None
    exposed = sorted(a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if exposed:
        raise ExposureError(
            f"refusing to listen on {host} ({', '.join(exposed)}) without a token: set "
            "INFERENCE_TOKEN (and the same token in the console's settings and in "
            "azure_local_ai.service_token), or listen on 127.0.0.1 or a Unix socket (--uds)"
        )


def serve(
    host: str | None = None,
    port: int | None = None,
    uds: str | None = None,
    socket_path: str | None = None,
) -> None:
    """Run the sidecar with uvicorn on ``host:port`` (defaults: ``INFERENCE_HOST`` or
    127.0.0.1, ``INFERENCE_PORT`` or 8090), or on the Unix socket ``uds`` alone; with
    ``socket_path`` (default ``INFERENCE_SOCKET``), on that Unix socket as well as on TCP."""
    import uvicorn

    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    host = host or env.env_str("INFERENCE_HOST", DEFAULT_HOST)
    port = port or env.env_int("INFERENCE_PORT", DEFAULT_PORT)
    if socket_path is None and uds is None:
        configured = env.inference_socket()
        socket_path = str(configured) if configured else None
    if uds is None:
        check_exposure(host, env.inference_token())
    app = create_app()
    options: dict[str, Any] = {
        "access_log": False,
        "timeout_graceful_shutdown": 10,
        "http": HTTPProtocol,  # each response in one write
        # Not meant to sit behind a proxy: no X-Forwarded-* header is believed, from anyone.
        "proxy_headers": False,
    }
    if uds is not None or socket_path is None:
        where = f"unix:{uds}" if uds else f"http://{host}:{port}"
        log.info(
            "inference sidecar %s listening on %s (state in %s)", VERSION, where, env.var_dir()
        )
        uvicorn.run(app, host=host, port=port, uds=uds, **options)
        return
    sockets = [tcp_listener(host, port), unix_listener(Path(socket_path))]
    log.info(
        "inference sidecar %s listening on http://%s:%s and unix:%s (state in %s)",
        VERSION,
        host,
        port,
        socket_path,
        env.var_dir(),
    )
    path = Path(socket_path)

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            await super().shutdown(sockets)
            # Here, not after run(): uvicorn re-raises the SIGTERM that stopped it once it has
            # shut down, and that ends the process at once.
            path.unlink(missing_ok=True)

    Server(uvicorn.Config(app, **options)).run(sockets=sockets)


def tcp_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(
            f"cannot listen on {host}:{port}: {exc.strerror} (address already in use?)"
        ) from None
    sock.set_inheritable(True)
    return sock


def unix_listener(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, replacing a stale one. Anyone on the machine may
    connect, as to 127.0.0.1 (the bearer token, when set, guards both): the PostgreSQL server
    may run as another system account."""
    path.parent.mkdir(parents=True, exist_ok=True)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # nobody answers there: a leftover of an earlier run
    else:
        raise SystemExit(f"another process already listens on the Unix socket {path}")
    finally:
        probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    path.chmod(0o666)
    sock.set_inheritable(True)
    return sock
