"""What the playground shows for texts embedded with a deployed model: each vector's facts
and picture, the cosine similarities between the texts, and how to reproduce them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings

from console.overview import RENDER_TIMEOUT_S
from console.playground import colours, reproduce
from inference.client import InferenceClient, InferenceError, InferenceUnavailable

MAX_TEXTS = 32
MAX_CHARS = 2000
# Embedding requests may take longer than a page render, but not without bound.
EMBED_TIMEOUT_S = 30.0
INPUT_TYPES = {
    "none": "None (the text as typed)",
    "query": "Query (the model's query prefix)",
    "passage": "Passage (the model's passage prefix)",
}
# The vector pictures colour each value by a palette of this many steps over [-1, 1].
PALETTE_STEPS = 101
PALETTE = [colours.colour(v) for v in np.linspace(-1.0, 1.0, PALETTE_STEPS)]
# ... laid out in rows of at most this many cells (384 dimensions: 8 rows of 48).
PICTURE_COLUMNS = 48


@dataclass(frozen=True)
class DeployedModel:
    """A model the sidecar has loaded, as ``GET /models`` describes it."""

    uri: str
    dimensions: int
    max_tokens: int
    query_prefix: str = ""
    passage_prefix: str = ""

    @classmethod
    def from_sidecar(cls, entry: dict[str, Any]) -> DeployedModel:
        prefixes = entry.get("prefixes") or {}
        return cls(
            uri=str(entry["model_uri"]),
            dimensions=int(entry.get("dimensions") or 0),
            max_tokens=int(entry.get("max_tokens") or 0),
            query_prefix=str(prefixes.get("query") or ""),
            passage_prefix=str(prefixes.get("passage") or ""),
        )


@dataclass(frozen=True)
class Deployed:
    """The sidecar's loaded models, or why they are unknown."""

    models: list[DeployedModel]
    problem: str = ""

    def find(self, uri: str) -> DeployedModel | None:
        return next((m for m in self.models if m.uri == uri), None)


def deployed_models() -> Deployed:
    """Asked with the page-render timeout: a sidecar that does not answer makes the page
    say so rather than hang it."""
    try:
        with InferenceClient(
            settings.INFERENCE_URL, settings.INFERENCE_TOKEN, timeout=RENDER_TIMEOUT_S
        ) as client:
            entries = client.models()
    except Exception as exc:  # any failure reads the same: the page cannot list the models
        return Deployed(models=[], problem=str(exc).strip() or type(exc).__name__)
    loaded = [DeployedModel.from_sidecar(e) for e in entries if e.get("loaded")]
    return Deployed(models=sorted(loaded, key=lambda m: m.uri))


class EmbedError(Exception):
    """The sidecar could not embed the texts; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class EmbeddedText:
    number: int  # 1-based, as the page and the SQL (WITH ORDINALITY) count
    text: str
    vector: np.ndarray
    tokens: int
    truncated: bool
    latency_ms: float
    picture: list[str] = field(default_factory=list)  # one colour per dimension

    @property
    def dimensions(self) -> int:
        return int(self.vector.shape[0])

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.vector))

    @property
    def picture_columns(self) -> int:
        return min(self.dimensions, PICTURE_COLUMNS)

    @property
    def picture_rows(self) -> int:
        return -(-self.dimensions // self.picture_columns)

    @property
    def picture_cells(self) -> list[tuple[int, int, str]]:
        """``(x, y, colour)`` per dimension, row by row."""
        columns = self.picture_columns
        return [(i % columns, i // columns, c) for i, c in enumerate(self.picture)]

    @property
    def low(self) -> float:
        return float(self.vector.min())

    @property
    def high(self) -> float:
        return float(self.vector.max())


@dataclass(frozen=True)
class HeatCell:
    value: float
    background: str
    foreground: str


@dataclass
class Embedding:
    """The playground's answer for one form submission."""

    model: DeployedModel
    input_type: str
    texts: list[EmbeddedText]
    sidecar_ms: float  # the time spent waiting for the sidecar
    total_ms: float  # the time the whole computation took, sidecar included
    scale: float  # the vector pictures map [-scale, scale] onto the colour scale
    similarities: np.ndarray  # cosine similarity between every two texts
    sql: str
    curl: str
    body: dict[str, Any]

    @property
    def heat_map(self) -> list[tuple[EmbeddedText, list[HeatCell]]]:
        return [
            (
                text,
                [
                    HeatCell(float(v), colours.colour(float(v)), colours.text_colour(float(v)))
                    for v in row
                ],
            )
            for text, row in zip(self.texts, self.similarities, strict=True)
        ]

    @property
    def legend(self) -> str:
        return colours.gradient()


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """Cosine similarity between every two rows (rows of zeros count as similarity 0)."""
    matrix = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1)
    unit = matrix / np.where(norms == 0, 1.0, norms)[:, None]
    return np.clip(unit @ unit.T, -1.0, 1.0)


def _picture(vector: np.ndarray, scale: float) -> list[str]:
    steps = np.rint((np.clip(vector / scale, -1.0, 1.0) + 1.0) / 2.0 * (PALETTE_STEPS - 1))
    return [PALETTE[int(i)] for i in steps]


def _embed_each(
    client: InferenceClient, model: DeployedModel, texts: list[str], input_type: str | None
) -> tuple[list[tuple[np.ndarray, int, float]], float]:
    """One ``/v1/embeddings`` call per text, so that each text's tokens (the call's usage)
    and latency are its own. Returns ``(vector, tokens, seconds)`` per text and the seconds
    spent in all calls."""
    deadline = time.monotonic() + EMBED_TIMEOUT_S
    rows: list[tuple[np.ndarray, int, float]] = []
    spent = 0.0
    for index, text in enumerate(texts):
        if time.monotonic() > deadline:
            raise EmbedError(
                f"the sidecar took more than {EMBED_TIMEOUT_S:g} s for the first {index} "
                "texts; embed fewer or shorter texts at a time",
                status=503,
            )
        start = time.perf_counter()
        vectors, usage = client.embed(model.uri, [text], input_type=input_type)
        elapsed = time.perf_counter() - start
        spent += elapsed
        rows.append((vectors[0], int(usage.get("prompt_tokens", 0)), elapsed))
    return rows, spent


def embed(model: DeployedModel, texts: list[str], input_type: str) -> Embedding:
    """Embed ``texts`` (already validated: 1 to MAX_TEXTS, none empty) with ``model``."""
    started = time.perf_counter()
    sent_type = None if input_type == "none" else input_type
    try:
        with InferenceClient(
            settings.INFERENCE_URL, settings.INFERENCE_TOKEN, timeout=EMBED_TIMEOUT_S
        ) as client:
            rows, sidecar_s = _embed_each(client, model, texts, sent_type)
    except InferenceUnavailable as exc:
        raise EmbedError(str(exc), status=503) from None
    except InferenceError as exc:
        raise EmbedError(f"the sidecar refused the texts: {exc}", status=422) from None
    vectors = np.stack([vector for vector, _, _ in rows])
    scale = float(np.abs(vectors).max()) or 1.0
    embedded = [
        EmbeddedText(
            number=number,
            text=text,
            vector=vector,
            tokens=tokens,
            # The sidecar cuts longer inputs to max_tokens, so a count at the limit is a cut.
            truncated=bool(model.max_tokens) and tokens >= model.max_tokens,
            latency_ms=seconds * 1000,
            picture=_picture(vector, scale),
        )
        for number, (text, (vector, tokens, seconds)) in enumerate(zip(texts, rows, strict=True), 1)
    ]
    body = reproduce.embeddings_body(model.uri, texts, input_type)
    return Embedding(
        model=model,
        input_type=input_type,
        texts=embedded,
        sidecar_ms=sidecar_s * 1000,
        total_ms=(time.perf_counter() - started) * 1000,
        scale=scale,
        similarities=cosine_matrix(vectors),
        sql=reproduce.embeddings_sql(model.uri, texts, input_type),
        curl=reproduce.curl_command(
            settings.INFERENCE_URL, body, token=bool(settings.INFERENCE_TOKEN)
        ),
        body=body,
    )
