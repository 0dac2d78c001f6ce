"""A small synchronous client of the inference sidecar, for the console, the worker and the CLI.

    client = InferenceClient("http://127.0.0.1:8090", token=None)
    vectors, usage = client.embed("all-MiniLM-L6-v2:v1", ["hello"], input_type="query")
    detailed = client.embed_detailed("all-MiniLM-L6-v2:v1", ["hello"])  # per-input facts too
    facts = client.model_facts()  # every registered model: dimensions, license, loaded, ...

``base_url`` may also be ``unix:/path/to/socket`` (the sidecar served with ``uds``). Errors the
sidecar reports raise ``InferenceError`` with its status, code and message; a sidecar that
cannot be reached raises ``InferenceUnavailable`` naming the URL.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from inference import config


class InferenceError(Exception):
    """The sidecar refused or failed a request; ``message`` is the sidecar's own."""

    def __init__(self, status: int | None, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


class InferenceUnavailable(InferenceError):
    """The sidecar could not be reached (not running, wrong URL, or it did not answer)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            None,
            "unavailable",
            f"the inference sidecar at {url} cannot be reached ({reason}); start it with "
            "`python -m inference serve`, or set INFERENCE_URL to where it runs",
        )
        self.url = url


@dataclass(frozen=True)
class EmbeddingDetails:
    """An answer of ``POST /v1/embeddings`` with what the sidecar says about each input."""

    model: str
    vectors: np.ndarray  # float32, (len(inputs), dimensions), in input order
    prompt_tokens: list[int]  # per input: tokens after truncation, special tokens and prefix in
    truncated: list[bool]  # per input: whether it was cut to the model's max tokens
    usage: dict[str, int]  # {"prompt_tokens", "total_tokens"} of the whole request
    process_time_ms: float | None  # the sidecar's own time (X-Process-Time-Ms), if it said


@dataclass(frozen=True)
class ModelFacts:
    """A registered model as ``GET /v1/models`` gives it: what a user of it needs to know."""

    uri: str
    created: int  # registration time, Unix seconds
    dimensions: int
    max_tokens: int  # special tokens included
    pooling: str  # "mean" | "cls"
    normalize: bool
    prefixes: dict[str, str]  # {"query": ..., "passage": ...}
    matryoshka_dimensions: list[int]  # shorter lengths `dimensions` may ask for; [] for none
    license_name: str | None
    license_url: str | None
    precision: str  # "fp32" | "int8"
    loaded: bool
    # "embedding" | "reranker". A reranker has no vectors: dimensions 0, no pooling ("") and
    # no prefixes or shorter lengths.
    kind: str = "embedding"

    @property
    def is_reranker(self) -> bool:
        return self.kind == "reranker"

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> ModelFacts:
        license_info = item.get("license") or {}
        return cls(
            uri=item["id"],
            created=int(item["created"]),
            dimensions=int(item["dimensions"] or 0),  # null for a reranker
            max_tokens=int(item["max_tokens"]),
            pooling=str(item.get("pooling") or ""),
            normalize=bool(item.get("normalize", False)),
            prefixes=dict(item.get("prefixes") or {}),
            matryoshka_dimensions=[int(d) for d in item.get("matryoshka_dimensions") or []],
            license_name=license_info.get("name"),
            license_url=license_info.get("url"),
            precision=item["precision"],
            loaded=bool(item["loaded"]),
            kind=str(item.get("kind") or "embedding"),  # sidecars older than rerankers: embedders
        )


class InferenceClient:
    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        """``base_url`` defaults to ``INFERENCE_URL``, ``token`` to ``INFERENCE_TOKEN``."""
        self.base_url = (base_url or config.inference_url()).rstrip("/")
        token = config.inference_token() if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        base, transport = self.base_url, None
        # Without TLS (plain http, a Unix socket) there is nothing to verify: skipping it
        # spares building a CA bundle's SSL context, tens of milliseconds per client.
        verify = base.startswith("https:")
        if base.startswith("unix:"):
            transport = httpx.HTTPTransport(uds=base.removeprefix("unix:"), verify=False)
            base = "http://sidecar"
        self._http = httpx.Client(
            base_url=base, transport=transport, headers=headers, timeout=timeout, verify=verify
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _request(self, method: str, path: str, json: Any = None, **kwargs: Any) -> Any:
        return self._send(method, path, json, **kwargs).json()

    def _send(self, method: str, path: str, json: Any = None, **kwargs: Any) -> httpx.Response:
        """The sidecar's successful response; its errors raise InferenceError."""
        try:
            response = self._http.request(method, path, json=json, **kwargs)
        except httpx.TimeoutException as exc:
            raise InferenceUnavailable(self.base_url, f"no answer in time: {exc}") from None
        except httpx.TransportError as exc:
            raise InferenceUnavailable(self.base_url, str(exc) or type(exc).__name__) from None
        if response.is_success:
            return response
        try:
            error = response.json()["error"]
            code, message = str(error.get("code")), str(error.get("message"))
        except (ValueError, KeyError, TypeError, AttributeError):
            code = "http_error"
            message = f"{method} {path} answered {response.status_code}: {response.text[:200]}"
        raise InferenceError(response.status_code, code, message)

    # -- service ------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``{"status", "models": [{"model_uri", "loaded", "error"?}], "version"}``."""
        return self._request("GET", "/health")

    def settings(self) -> dict[str, Any]:
        return self._request("GET", "/settings")

    def settings_schema(self) -> list[dict[str, Any]]:
        """One entry per setting: key, type, default, min, max, choices, help, unit."""
        return self._request("GET", "/settings", params={"describe": "1"})["schema"]

    def update_settings(self, updates: Mapping[str, Any]) -> dict[str, Any]:
        """Change some settings; returns all values. A bad key raises InferenceError whose
        message names it, and nothing changes."""
        return self._request("PUT", "/settings", json=dict(updates))

    # -- registry -----------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        return self._request("GET", "/models")["models"]

    def model(self, uri: str) -> dict[str, Any]:
        return self._request("GET", f"/models/{uri}")

    def model_facts(self) -> list[ModelFacts]:
        """Every registered model with its facts (``GET /v1/models``), in registration order."""
        answer = self._request("GET", "/v1/models")
        return [ModelFacts.from_item(item) for item in answer["data"]]

    def model_facts_of(self, uri: str) -> ModelFacts:
        """One model's facts (``GET /v1/models/{uri}``); an unknown one raises InferenceError
        with status 404."""
        return ModelFacts.from_item(self._request("GET", f"/v1/models/{uri}"))

    def register(
        self,
        uri: str,
        model_path: str,
        tokenizer_path: str | None = None,
        *,
        precision: str | None = None,
        load: bool = True,
    ) -> dict[str, Any]:
        """Register (and by default load) a model; returns its metadata with its ``id``."""
        body: dict[str, Any] = {"model_uri": uri, "model_path": str(model_path), "load": load}
        if tokenizer_path is not None:
            body["tokenizer_path"] = str(tokenizer_path)
        if precision is not None:
            body["precision"] = precision
        return self._request("POST", "/models", json=body)

    def load(self, uri: str) -> dict[str, Any]:
        return self._request("POST", f"/models/{uri}/load")

    def unload(self, uri: str) -> dict[str, Any]:
        return self._request("POST", f"/models/{uri}/unload")

    def unregister(self, uri: str) -> dict[str, Any]:
        return self._request("DELETE", f"/models/{uri}")

    # -- embeddings ---------------------------------------------------------------------------

    def embed(
        self,
        model: str,
        inputs: Sequence[str] | str,
        input_type: str | None = None,
        dimensions: int | None = None,
    ) -> tuple[np.ndarray, dict[str, int]]:
        """Embed ``inputs``; returns float32 ``(len(inputs), dims)`` rows and the usage."""
        details = self.embed_detailed(model, inputs, input_type, dimensions)
        return details.vectors, details.usage

    def rerank(
        self, model: str | None, query: str, documents: Sequence[str]
    ) -> list[tuple[int, float]]:
        """Score ``documents`` against ``query`` with the reranker ``model`` (None: the
        setting default_rerank_model) over ``POST /v1/rerank``; ``(index, score)`` pairs,
        best first."""
        body: dict[str, Any] = {"query": query, "documents": list(documents)}
        if model:
            body["model"] = model
        results = self._request("POST", "/v1/rerank", json=body)["results"]
        return [(int(r["index"]), float(r["relevance_score"])) for r in results]

    def chunks(
        self,
        model: str,
        texts: Sequence[str],
        size: int,
        overlap: int = 0,
        input_type: str | None = None,
    ) -> list[list[str]]:
        """Each text split by the model's tokens into chunks of at most ``size`` tokens that
        embed whole (``overlap`` tokens shared), in order."""
        body: dict[str, Any] = {"model": model, "input": list(texts), "size": size}
        body["overlap"] = overlap
        if input_type is not None:
            body["input_type"] = input_type
        rows = sorted(self._request("POST", "/chunks", json=body)["data"], key=lambda r: r["index"])
        return [[chunk["text"] for chunk in row["chunks"]] for row in rows]

    def embed_detailed(
        self,
        model: str,
        inputs: Sequence[str] | str,
        input_type: str | None = None,
        dimensions: int | None = None,
        *,
        truncate: bool = True,
    ) -> EmbeddingDetails:
        """Embed ``inputs``; the vectors with each input's token count and whether it was cut
        to the model's max tokens (``truncate=False`` refuses such an input instead), the usage
        and the sidecar's processing time."""
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        body: dict[str, Any] = {"model": model, "input": texts, "encoding_format": "base64"}
        if input_type is not None:
            body["input_type"] = input_type
        if dimensions is not None:
            body["dimensions"] = dimensions
        if not truncate:
            body["truncate"] = False
        response = self._send("POST", "/v1/embeddings", json=body)
        answer = response.json()
        rows = sorted(answer["data"], key=lambda item: item["index"])
        vectors = np.stack(
            [np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in rows]
        )
        process_time = response.headers.get("x-process-time-ms")
        return EmbeddingDetails(
            model=answer["model"],
            vectors=vectors.astype(np.float32, copy=False),
            prompt_tokens=[int(item["prompt_tokens"]) for item in rows],
            truncated=[bool(item["truncated"]) for item in rows],
            usage=answer["usage"],
            process_time_ms=float(process_time) if process_time is not None else None,
        )
