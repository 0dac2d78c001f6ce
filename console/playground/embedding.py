"""What the playground shows for texts embedded with a deployed model: each vector's facts
and picture, the cosine similarities between the texts, and how to reproduce them."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings

from console import sidecar as console_sidecar
from console.overview import RENDER_TIMEOUT_S
from console.playground import colours, reproduce
from inference.client import (
    EmbeddingDetails,
    InferenceClient,
    InferenceError,
    InferenceUnavailable,
    ModelFacts,
)

MAX_TEXTS = 32
MAX_CHARS = 2000
# Embedding requests may take longer than a page render, but not without bound.
EMBED_TIMEOUT_S = 30.0
INPUT_TYPES = {
    "none": "None (the text as typed)",
    "query": "Query (the model's query prefix)",
    "passage": "Passage (the model's passage prefix)",
}
# The vector pictures colour each value by a palette of this many steps over [-1, 1]: enough
# to tell values apart in a picture a few pixels per value, few enough to keep it small.
PALETTE_STEPS = 25
PALETTE = [colours.colour(v) for v in np.linspace(-1.0, 1.0, PALETTE_STEPS)]
# ... laid out in rows of at most this many cells (384 dimensions: 8 rows of 48).
PICTURE_COLUMNS = 48


@dataclass(frozen=True)
class Deployed:
    """The sidecar's loaded models, or why they are unknown."""

    models: list[ModelFacts]
    problem: str = ""

    @property
    def embedders(self) -> list[ModelFacts]:
        """The models that embed (the Embed tab's and the sample table's choices)."""
        return [m for m in self.models if not m.is_reranker]

    @property
    def rerankers(self) -> list[ModelFacts]:
        """The cross-encoders that score (query, document) pairs (the Rerank tab's choices)."""
        return [m for m in self.models if m.is_reranker]


def sidecar_client(timeout: float = RENDER_TIMEOUT_S) -> InferenceClient:
    """A client of the configured sidecar. Pages that only read use the page-render timeout,
    so that a sidecar that does not answer makes the page say so rather than hang it."""
    return console_sidecar.sidecar_client(timeout)


def deployed_models(client: InferenceClient | None = None) -> Deployed:
    """The loaded models, asked through ``client`` (default: a new one that reads)."""
    if client is None:
        with sidecar_client() as own:
            return deployed_models(own)
    try:
        facts = client.model_facts()
    except Exception as exc:  # any failure reads the same: the page cannot list the models
        return Deployed(models=[], problem=str(exc).strip() or type(exc).__name__)
    return Deployed(models=sorted((m for m in facts if m.loaded), key=lambda m: m.uri))


def default_reranker(client: InferenceClient | None = None) -> str:
    """The sidecar's setting ``default_rerank_model`` ("" when unset or unknown)."""
    if client is None:
        with sidecar_client() as own:
            return default_reranker(own)
    try:
        return str(client.settings().get("default_rerank_model") or "")
    except Exception:  # the page preselects nothing; the model list says what is wrong
        return ""


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
    tokens: int  # what the model read: after truncation, special tokens and prefix included
    truncated: bool  # cut to the model's max tokens
    latency_ms: float  # the call's round trip
    sidecar_ms: float | None  # the sidecar's own time for it (X-Process-Time-Ms)
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
    def picture_paths(self) -> list[tuple[str, str]]:
        """``(colour, SVG path data)``: the cells of each colour as one path, neighbours in a
        row of the same colour drawn as one rectangle (a few dozen elements in all, not one
        per dimension)."""
        columns = self.picture_columns
        runs: dict[str, list[str]] = {}
        for y in range(self.picture_rows):
            row = self.picture[y * columns : (y + 1) * columns]
            x = 0
            for colour, cells in itertools.groupby(row):
                width = len(list(cells))
                runs.setdefault(colour, []).append(f"M{x} {y}h{width}v1h-{width}z")
                x += width
        return [(colour, "".join(rectangles)) for colour, rectangles in runs.items()]

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

    model: ModelFacts
    input_type: str
    texts: list[EmbeddedText]
    calls_ms: float  # the round trips of the calls to the sidecar, together
    sidecar_ms: float | None  # the sidecar's own time in them (None: it did not say)
    total_ms: float  # the whole computation, calls included
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
    def prefix(self) -> str:
        """What the sidecar put before each text for the input type ("" for none)."""
        return self.model.prefixes.get(self.input_type, "") if self.input_type != "none" else ""

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
    client: InferenceClient, model: ModelFacts, texts: list[str], input_type: str | None
) -> list[tuple[EmbeddingDetails, float]]:
    """One ``/v1/embeddings`` call per text, so that each text's latency is its own (what an
    application embedding one query waits); the whole is bounded by EMBED_TIMEOUT_S."""
    deadline = time.monotonic() + EMBED_TIMEOUT_S
    answers = []
    for index, text in enumerate(texts):
        if time.monotonic() > deadline:
            raise EmbedError(
                f"the sidecar took more than {EMBED_TIMEOUT_S:g} s for the first {index} "
                "texts; embed fewer or shorter texts at a time",
                status=503,
            )
        start = time.perf_counter()
        details = client.embed_detailed(model.uri, [text], input_type=input_type)
        answers.append((details, time.perf_counter() - start))
    return answers


def embed(
    client: InferenceClient, model: ModelFacts, texts: list[str], input_type: str
) -> Embedding:
    """Embed ``texts`` (already validated: 1 to MAX_TEXTS, none empty) with ``model``;
    ``client`` should allow EMBED_TIMEOUT_S per call."""
    started = time.perf_counter()
    sent_type = None if input_type == "none" else input_type
    try:
        answers = _embed_each(client, model, texts, sent_type)
    except InferenceUnavailable as exc:
        raise EmbedError(str(exc), status=503) from None
    except InferenceError as exc:
        raise EmbedError(f"the sidecar refused the texts: {exc}", status=422) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise EmbedError(
            f"the sidecar at {settings.INFERENCE_URL} answered in a form this console does not "
            f"read ({type(exc).__name__}: {exc}); is it an older version than the console?",
            status=503,
        ) from None
    vectors = np.concatenate([details.vectors for details, _ in answers])
    scale = float(np.abs(vectors).max()) or 1.0
    embedded = [
        EmbeddedText(
            number=number,
            text=text,
            vector=details.vectors[0],
            tokens=details.prompt_tokens[0],
            truncated=details.truncated[0],
            latency_ms=seconds * 1000,
            sidecar_ms=details.process_time_ms,
            picture=_picture(details.vectors[0], scale),
        )
        for number, (text, (details, seconds)) in enumerate(zip(texts, answers, strict=True), 1)
    ]
    sidecar_times = [t.sidecar_ms for t in embedded]
    body = reproduce.embeddings_body(model.uri, texts, input_type)
    return Embedding(
        model=model,
        input_type=input_type,
        texts=embedded,
        calls_ms=sum(t.latency_ms for t in embedded),
        sidecar_ms=None if None in sidecar_times else sum(sidecar_times),  # type: ignore[arg-type]
        total_ms=(time.perf_counter() - started) * 1000,
        scale=scale,
        similarities=cosine_matrix(vectors),
        sql=reproduce.embeddings_sql(model.uri, texts, input_type),
        curl=reproduce.curl_command(
            settings.INFERENCE_URL, body, token=bool(settings.INFERENCE_TOKEN)
        ),
        body=body,
    )
