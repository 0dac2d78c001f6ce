"""The Rerank tab: documents ranked against a query by a deployed reranker (a cross-encoder),
through SQL ``azure_local_ai.rank`` on the managed server, as an application would call it.

The statement runs in database ``playground`` (the semantic search demo's) when it exists,
else in ``postgres``. Where that database lacks the ``azure_local_ai`` extension, it is
created for the statement inside a transaction that is rolled back: ranking leaves nothing
behind, and needs the extension allowed by ``azure.extensions`` only where it is not there.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from django.conf import settings

from console.overview import RENDER_TIMEOUT_S
from console.playground import demo, reproduce
from console.playground.embedding import EMBED_TIMEOUT_S
from serverparams.server import ServerError, get_managed_server

MAX_DOCUMENTS = 50
MAX_CHARS = 2000  # per document, and for the query
# Ranking may take longer than a page render, but not without bound (as embedding).
RANK_TIMEOUT_S = EMBED_TIMEOUT_S
EXTENSION = "azure_local_ai"
FALLBACK_DATABASE = "postgres"
# What the tab shows until the user types their own: a question, documents that answer it
# more or less well, and some on other subjects (one in German).
SAMPLE_QUERY = "How do I keep bread fresh?"
SAMPLE_DOCUMENTS = (
    "Ein Index beschleunigt die Suche in der Datenbank.",
    "Bread stays fresh longer in a cloth bag at room temperature.",
    "The bakery opens at seven and sells rye, spelt and sourdough loaves.",
    "Freeze sliced bread and toast the slices straight from the freezer.",
    "Cats sleep twelve to sixteen hours a day.",
    "Keeping bread in the fridge makes it go stale faster.",
    "A sourdough starter needs flour and water every day.",
    "PostgreSQL stores embeddings in a vector column and searches them with an index.",
)
# rank() with the values as parameters; the timeout bounds the whole call (all requests).
STATEMENT = (
    "SELECT r.rank, r.document_id, r.relevance_score\n"
    "FROM azure_local_ai.rank(%(query)s, %(documents)s::text[],\n"
    "                         model => %(model)s, timeout_ms => %(timeout_ms)s) AS r\n"
    "ORDER BY r.rank"
)


class RerankError(Exception):
    """What stopped the ranking, said for people. ``not_allowed``: the extension must be
    allowed by ``azure.extensions`` first; ``status``: the HTTP status to answer with."""

    def __init__(self, message: str, *, not_allowed: bool = False, status: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.not_allowed = not_allowed
        self.status = status

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class RankedDocument:
    number: int  # its position in the input, from 1 (rank()'s document_id)
    text: str
    rank: int  # 1 = the most relevant
    score: float  # relevance_score
    bar: float  # the score's bar, in percent of its full width

    @property
    def moved(self) -> int:
        """Places gained by ranking (negative: lost)."""
        return self.number - self.rank

    @property
    def moved_by(self) -> int:
        return abs(self.moved)


@dataclass
class Ranking:
    """The tab's answer for one submission."""

    model: str
    query: str
    documents: list[RankedDocument]  # in input order
    database: str  # where the statement ran
    created_extension: bool  # the extension was made for the statement (and rolled back)
    elapsed_ms: float  # the statement's round trip
    sql: str  # the statement with its values written in, ready to copy
    curl: str
    body: dict[str, Any]
    low: float  # the bars' scale: [low, high]
    high: float

    @property
    def ranked(self) -> list[RankedDocument]:
        return sorted(self.documents, key=lambda d: d.rank)

    @property
    def probabilities(self) -> bool:
        """Whether the bars are the scores themselves (0..1, as a sigmoid gives them)."""
        return (self.low, self.high) == (0.0, 1.0)


def _database(server: Any) -> str:
    with server.connect(connect_timeout=RENDER_TIMEOUT_S) as conn:
        found = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [demo.DATABASE]
        ).fetchone()
    return demo.DATABASE if found else FALLBACK_DATABASE


def rank(model: str, query: str, documents: Sequence[str]) -> Ranking:
    """``documents`` (already validated: 1 to MAX_DOCUMENTS, none empty) ranked against
    ``query`` by the reranker ``model``, through SQL on the managed server."""
    server = get_managed_server()
    timeout_ms = int(RANK_TIMEOUT_S * 1000)
    database, installed = FALLBACK_DATABASE, None
    try:
        database = _database(server)
        with server.connect(database, autocommit=False, connect_timeout=RENDER_TIMEOUT_S) as conn:
            conn.execute(f"SET LOCAL statement_timeout = {timeout_ms}")
            installed = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = %s", [EXTENSION]
            ).fetchone()
            if installed is None:
                conn.execute(f"CREATE EXTENSION {EXTENSION}")
            started = time.perf_counter()
            rows = conn.execute(
                STATEMENT,
                {
                    "query": query,
                    "documents": list(documents),
                    "model": model,
                    "timeout_ms": timeout_ms,
                },
            ).fetchall()
            elapsed = time.perf_counter() - started
            conn.rollback()  # nothing to keep: the extension, where it was made, goes again
    except psycopg.errors.InsufficientPrivilege as exc:
        raise RerankError(
            f"Database {database} has no azure_local_ai extension, and it cannot be created "
            f"there for the statement: {demo.error_text(exc)}",
            not_allowed=True,
        ) from None
    except psycopg.errors.UndefinedFunction as exc:
        version = installed[0] if installed else "?"
        raise RerankError(
            f"Database {database} has azure_local_ai {version}, which has no rank(): "
            f"{demo.error_text(exc)}. Update it there with ALTER EXTENSION azure_local_ai UPDATE."
        ) from None
    except psycopg.Error as exc:
        raise RerankError(f"rank() failed: {demo.error_text(exc)}") from None
    except ServerError as exc:
        raise RerankError(str(exc), status=503) from None
    scores = {
        int(document_id): (int(position), float(score)) for position, document_id, score in rows
    }
    low, high, widths = demo.score_bars([scores[n][1] for n in range(1, len(documents) + 1)])
    ranked = [
        RankedDocument(number=n, text=text, rank=scores[n][0], score=scores[n][1], bar=width)
        for n, (text, width) in enumerate(zip(documents, widths, strict=True), 1)
    ]
    body = reproduce.rerank_body(model, query, documents)
    return Ranking(
        model=model,
        query=query,
        documents=ranked,
        database=database,
        created_extension=installed is None,
        elapsed_ms=elapsed * 1000,
        sql=reproduce.rank_sql(model, query, documents),
        curl=reproduce.curl_command(
            settings.INFERENCE_URL, body, token=bool(settings.INFERENCE_TOKEN), path="/v1/rerank"
        ),
        body=body,
        low=low,
        high=high,
    )
