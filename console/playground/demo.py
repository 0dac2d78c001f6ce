"""The semantic search demo: a sample table in the managed server, embedded and searched
through SQL as a user's application would do it.

``setup`` creates database ``playground`` (when missing) with the ``vector`` and
``azure_local_ai`` extensions, fills table ``playground_documents`` with the shipped sample
documents embedded in SQL by the array overload of ``create_embeddings``, one batch per
statement, and builds an HNSW index for cosine distance. The table's comment records what it
was made from (model, documents' digest), so running setup again keeps a table that matches
and replaces one that does not. ``search`` answers a query with the nearest documents by
``ORDER BY embedding <=> <the query's embedding>``.

``hybrid_search`` shows a retrieval pipeline stage by stage, each stage one statement: the
full-text candidates (``ts_rank`` over the documents' ``tsvector``), the vector candidates
(the same search as ``search``), their reciprocal rank fusion (one query whose CTEs are the two
candidate searches), and ``azure_local_ai.rank`` with a reranker over the best fused ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from console.overview import RENDER_TIMEOUT_S
from console.playground.embedding import EMBED_TIMEOUT_S
from console.playground.reproduce import sql_literal
from inference import catalog as model_catalog
from inference.client import ModelFacts
from serverparams.catalog import split_list
from serverparams.server import ManagedServer, ServerError, get_managed_server

DATABASE = "playground"
TABLE = "playground_documents"
INDEX = "playground_documents_embedding_idx"
EXTENSIONS = ("vector", "azure_local_ai")
SAMPLES_PATH = Path(__file__).resolve().parent / "samples" / "documents.json"
BATCH_SIZE = 64  # documents per INSERT, each one call of the array overload
SETUP_TIMEOUT_S = 300
SEARCH_TIMEOUT_S = EMBED_TIMEOUT_S
DEFAULT_K = 5
MAX_K = 20
MAX_QUERY_CHARS = 500
# pg_advisory_xact_lock key serialising setups (two admins clicking at once).
SETUP_LOCK = 0x706C6179  # "play"

CREATE_TABLE = (
    "CREATE TABLE playground_documents (\n"
    "    id integer PRIMARY KEY,\n"
    "    lang text NOT NULL,\n"
    "    topic text NOT NULL,\n"
    "    body text NOT NULL,\n"
    "    embedding vector({dimensions}) NOT NULL\n"
    ")"
)
# One batch: the documents as parallel arrays, embedded by the array overload with the ids
# as labels, so each embedding meets its row whatever order the rows come in.
INSERT_BATCH = (
    "INSERT INTO playground_documents (id, lang, topic, body, embedding)\n"
    "SELECT id, d.lang, d.topic, d.body, e.embedding::vector\n"
    "FROM unnest(%(ids)s::integer[], %(langs)s::text[], %(topics)s::text[], %(bodies)s::text[])\n"
    "       AS d(id, lang, topic, body)\n"
    "JOIN azure_local_ai.create_embeddings(%(model)s, %(inputs)s::text[], %(ids)s::integer[])\n"
    "       AS e(id, embedding) USING (id)"
)
CREATE_INDEX = (
    "CREATE INDEX playground_documents_embedding_idx ON playground_documents\n"
    "    USING hnsw (embedding vector_cosine_ops)"
)
SEARCH = (
    "SELECT d.id, d.lang, d.topic, d.body,\n"
    "       1 - (d.embedding <=> q.embedding) AS similarity\n"
    "FROM playground_documents AS d,\n"
    "     (SELECT azure_local_ai.{function}({model}, {query})::vector AS embedding) AS q\n"
    "ORDER BY d.embedding <=> q.embedding\n"
    "LIMIT {k}"
)
NOT_SET_UP = "The sample table has not been created yet."

# -- hybrid search + rerank --------------------------------------------------------------------

FULLTEXT_INDEX = "playground_documents_body_fts_idx"
# The documents' text search configuration (English stemming and stop words; words of other
# languages are kept as they are written).
FULLTEXT_CONFIG = "english"
CANDIDATES = 20  # per candidate search (within HNSW's default ef_search of 40)
RRF_K = 60  # reciprocal rank fusion: a document's score is the sum of 1 / (RRF_K + its rank)
RERANK_TOP = 20  # the best fused candidates that the reranker orders
CREATE_FULLTEXT_INDEX = (
    "CREATE INDEX playground_documents_body_fts_idx ON playground_documents\n"
    "    USING gin (to_tsvector('english', body))"
)
# The statements' parts; {query}, {model} and {reranker} are SQL constants (written in to
# show) or placeholders (to run), {function} the table's query function.
#
# Full text: the query's words, stemmed and without stop words, any of them (plainto_tsquery
# asks for all: its '&' become '|'), ranked by ts_rank; ties by id.
FULLTEXT_CTES = (
    "terms AS (\n"
    "    SELECT replace(plainto_tsquery('english', {query})::text, ' & ', ' | ')::tsquery\n"
    "           AS any_word\n"
    "), fulltext AS (\n"
    "    SELECT d.id, ts_rank(to_tsvector('english', d.body), t.any_word) AS score\n"
    "    FROM playground_documents AS d, terms AS t\n"
    "    WHERE to_tsvector('english', d.body) @@ t.any_word\n"
    "    ORDER BY score DESC, d.id\n"
    f"    LIMIT {CANDIDATES}\n"
    ")"
)
# Vector: the nearest by cosine distance, through the HNSW index (as SEARCH).
VECTOR_CTE = (
    "vector AS (\n"
    "    SELECT d.id, d.embedding <=> q.embedding AS distance\n"
    "    FROM playground_documents AS d,\n"
    "         (SELECT azure_local_ai.{function}({model}, {query})::vector AS embedding) AS q\n"
    "    ORDER BY d.embedding <=> q.embedding\n"
    f"    LIMIT {CANDIDATES}\n"
    ")"
)
FULLTEXT_SEARCH = (
    f"WITH {FULLTEXT_CTES}\n"
    "SELECT f.id, row_number() OVER (ORDER BY f.score DESC, f.id) AS rank, f.score,\n"
    "       d.lang, d.topic, d.body\n"
    "FROM fulltext AS f JOIN playground_documents AS d USING (id)\n"
    "ORDER BY rank"
)
VECTOR_SEARCH = (
    f"WITH {VECTOR_CTE}\n"
    "SELECT v.id, row_number() OVER (ORDER BY v.distance, v.id) AS rank,\n"
    "       1 - v.distance AS similarity, d.lang, d.topic, d.body\n"
    "FROM vector AS v JOIN playground_documents AS d USING (id)\n"
    "ORDER BY rank"
)
# Fusion: each candidate's rank in each list, summed as 1 / (60 + rank); ties by id.
FUSED_SEARCH = (
    f"WITH {FULLTEXT_CTES}, {VECTOR_CTE}, ranks AS (\n"
    "    SELECT id, 'full text' AS list, row_number() OVER (ORDER BY score DESC, id) AS rank\n"
    "    FROM fulltext\n"
    "    UNION ALL\n"
    "    SELECT id, 'vector', row_number() OVER (ORDER BY distance, id) FROM vector\n"
    "), fused AS (\n"
    f"    SELECT id, sum(1.0 / ({RRF_K} + rank)) AS rrf,\n"
    "           min(rank) FILTER (WHERE list = 'full text') AS fulltext_rank,\n"
    "           min(rank) FILTER (WHERE list = 'vector') AS vector_rank\n"
    "    FROM ranks\n"
    "    GROUP BY id\n"
    ")\n"
    "SELECT f.id, row_number() OVER (ORDER BY f.rrf DESC, f.id) AS rank, f.rrf,\n"
    "       f.fulltext_rank, f.vector_rank, count(*) OVER () AS candidates,\n"
    "       d.lang, d.topic, d.body\n"
    "FROM fused AS f JOIN playground_documents AS d USING (id)\n"
    "ORDER BY rank\n"
    f"LIMIT {RERANK_TOP}"
)
# Rerank: the fused candidates (ids in fused order) scored by the reranker, best first.
RERANK = (
    "WITH candidates AS (\n"
    "    SELECT d.id, d.body, c.n\n"
    "    FROM unnest({ids}) WITH ORDINALITY AS c(id, n)\n"
    "    JOIN playground_documents AS d USING (id)\n"
    ")\n"
    "SELECT c.id, r.rank, r.relevance_score\n"
    "FROM azure_local_ai.rank(\n"
    "       {query},\n"
    "       ARRAY(SELECT body FROM candidates ORDER BY n),\n"
    "       ARRAY(SELECT id::text FROM candidates ORDER BY n),\n"
    "       model => {reranker}{timeout}\n"
    "     ) AS r\n"
    "JOIN candidates AS c ON c.id::text = r.document_id\n"
    "ORDER BY r.rank"
)


@dataclass(frozen=True)
class Document:
    id: int
    lang: str
    topic: str
    text: str


@dataclass(frozen=True)
class Samples:
    license: str
    notice: str
    language_names: dict[str, str]  # code -> English name
    documents: tuple[Document, ...]

    @property
    def languages(self) -> list[str]:
        """The names of the languages present, in the file's order."""
        present = {d.lang for d in self.documents}
        return [name for code, name in self.language_names.items() if code in present]


@functools.cache
def samples() -> Samples:
    """The sample documents shipped in ``samples/documents.json``."""
    data = json.loads(SAMPLES_PATH.read_text(encoding="utf-8"))
    documents = tuple(
        Document(id=int(d["id"]), lang=str(d["lang"]), topic=str(d["topic"]), text=str(d["text"]))
        for d in data["documents"]
    )
    return Samples(
        license=str(data["license"]),
        notice=str(data["notice"]),
        language_names={str(k): str(v) for k, v in data["languages"].items()},
        documents=documents,
    )


def digest(documents: Sequence[Document]) -> str:
    rows = [[d.id, d.lang, d.topic, d.text] for d in documents]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()


def query_function(model: ModelFacts) -> str:
    """Queries get the model's query prefix where it has one (e5), else the plain call."""
    return "embed_query" if model.prefixes.get("query") else "create_embeddings"


@dataclass(frozen=True)
class TableInfo:
    """What the table's comment says it was made from, and whether its index is there."""

    model: str
    dimensions: int
    documents: int
    sha256: str
    query_function: str
    indexed: bool

    @property
    def languages(self) -> str:
        """The languages the catalog says the model reads ("" when it does not say)."""
        entry = model_catalog.catalog().find(self.model)
        return str(entry.raw.get("languages") or "") if entry else ""

    def matches(self, model: ModelFacts, documents_digest: str) -> bool:
        return (
            self.indexed
            and self.model == model.uri
            and self.dimensions == model.dimensions
            and self.sha256 == documents_digest
            and self.query_function == query_function(model)
        )


class DemoError(Exception):
    """What stopped the demo, said for people. ``not_allowed`` names the extensions that
    ``azure.extensions`` must allow first; ``status`` is the HTTP status to answer with
    (503: the managed server cannot be reached)."""

    def __init__(self, message: str, *, not_allowed: Sequence[str] = (), status: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.not_allowed = list(not_allowed)
        self.status = status

    def __str__(self) -> str:
        return self.message


@dataclass
class DemoStatus:
    problem: str = ""
    not_allowed: list[str] = field(default_factory=list)
    table: TableInfo | None = None


@dataclass(frozen=True)
class SetupOutcome:
    created: bool  # False: a matching table was already there and was kept
    table: TableInfo
    batches: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Match:
    id: int
    lang: str
    topic: str
    body: str
    similarity: float

    @property
    def language(self) -> str:
        return samples().language_names.get(self.lang, self.lang)


@dataclass(frozen=True)
class SearchResult:
    query: str
    k: int
    model: str
    sql: str  # the statement run, with its values written in, ready to copy
    matches: list[Match]
    elapsed_ms: float  # the statement's round trip, embedding the query included


def error_text(exc: psycopg.Error) -> str:
    """What a failed statement says, its hint appended, for the page."""
    diag = exc.diag
    text = diag.message_primary or str(exc).strip() or type(exc).__name__
    if diag.message_hint:
        text += f" ({diag.message_hint})"
    return text


def _table_info(conn: psycopg.Connection) -> TableInfo | None:
    row = conn.execute(
        "SELECT obj_description(c.oid, 'pg_class'), EXISTS (SELECT 1 FROM pg_class i"
        " WHERE i.relname = %s AND i.relnamespace = c.relnamespace)"
        " FROM pg_class c WHERE c.oid = to_regclass(%s)",
        [INDEX, f"public.{TABLE}"],
    ).fetchone()
    if row is None or not row[0]:
        return None
    try:
        made = json.loads(row[0])
        return TableInfo(
            model=str(made["model"]),
            dimensions=int(made["dimensions"]),
            documents=int(made["documents"]),
            sha256=str(made["sha256"]),
            query_function=str(made["query_function"]),
            indexed=bool(row[1]),
        )
    except (ValueError, KeyError, TypeError):
        return None  # not a table this demo made: setup replaces it


def _allowed(conn: psycopg.Connection) -> set[str]:
    try:
        row = conn.execute("SHOW azure.extensions").fetchone()
    except psycopg.errors.UndefinedObject:
        raise DemoError(
            "The azure_local_ai module is not loaded on the managed server (it must be in "
            "shared_preload_libraries), so its extension cannot be created."
        ) from None
    return set(split_list(row[0] if row else ""))


def _database_exists(conn: psycopg.Connection) -> bool:
    return (
        conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone()
        is not None
    )


def _check_extensions(server: ManagedServer, timeout: int) -> bool:
    """Whether the database exists; raises DemoError when an extension it lacks is either
    not on the server or not allowed by ``azure.extensions``."""
    with server.connect(connect_timeout=timeout) as conn:
        allowed = _allowed(conn)
        available = {
            name
            for (name,) in conn.execute(
                "SELECT name FROM pg_available_extensions WHERE name = ANY(%s)", [list(EXTENSIONS)]
            )
        }
        exists = _database_exists(conn)
    installed: set[str] = set()
    if exists:
        with server.connect(DATABASE, connect_timeout=timeout) as conn:
            installed = {name for (name,) in conn.execute("SELECT extname FROM pg_extension")}
    lacking = [name for name in EXTENSIONS if name not in installed]
    missing = [name for name in lacking if name not in available]
    if missing:
        raise DemoError(f"The managed server has no {' or '.join(missing)} extension installed.")
    not_allowed = [name for name in lacking if name not in allowed]
    if not_allowed:
        names = " and ".join(name.upper() for name in not_allowed)
        raise DemoError(
            f"Creating the sample table needs {names} in the server parameter "
            "azure.extensions, which does not allow them yet.",
            not_allowed=not_allowed,
        )
    return exists


def status(timeout: int = RENDER_TIMEOUT_S) -> DemoStatus:
    """The demo's state for the page: whether the table is there, and what setup needs."""
    server = get_managed_server()
    try:
        exists = _check_extensions(server, timeout)
        if not exists:
            return DemoStatus()
        with server.connect(DATABASE, connect_timeout=timeout) as conn:
            return DemoStatus(table=_table_info(conn))
    except DemoError as exc:
        # (A table cannot exist where the extensions are missing: it has a vector column.)
        return DemoStatus(
            problem="" if exc.not_allowed else exc.message, not_allowed=exc.not_allowed
        )
    except (ServerError, psycopg.Error) as exc:
        return DemoStatus(problem=str(exc).strip())


def _create_database(server: ManagedServer) -> None:
    # Another setup may have created it meanwhile (at the same moment: a unique violation).
    created_meanwhile = (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation)
    with server.connect() as conn, contextlib.suppress(*created_meanwhile):
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))


def _fill(conn: psycopg.Connection, model: ModelFacts, documents: Sequence[Document]) -> int:
    conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    conn.execute(CREATE_TABLE.format(dimensions=int(model.dimensions)))
    batches = 0
    for start in range(0, len(documents), BATCH_SIZE):
        batch = documents[start : start + BATCH_SIZE]
        conn.execute(
            INSERT_BATCH,
            {
                "ids": [d.id for d in batch],
                "langs": [d.lang for d in batch],
                "topics": [d.topic for d in batch],
                "bodies": [d.text for d in batch],
                "model": model.uri,
                # Documents get the model's passage prefix where it has one (e5).
                "inputs": [model.prefixes.get("passage", "") + d.text for d in batch],
            },
        )
        batches += 1
    conn.execute(CREATE_INDEX)
    conn.execute(CREATE_FULLTEXT_INDEX)
    return batches


def setup(model: ModelFacts, documents: Sequence[Document] | None = None) -> SetupOutcome:
    """Create (or keep, when it matches) the sample table embedded with ``model``;
    ``documents`` defaults to the shipped samples."""
    chosen = list(samples().documents if documents is None else documents)
    wanted_digest = digest(chosen)
    if model.dimensions <= 0:
        raise DemoError(f"The sidecar does not say how many dimensions {model.uri} has.")
    server = get_managed_server()
    started = time.perf_counter()
    try:
        if not _check_extensions(server, timeout=10):
            _create_database(server)
        with server.connect(DATABASE, autocommit=False) as conn:
            conn.execute(f"SET LOCAL statement_timeout = {SETUP_TIMEOUT_S * 1000}")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [SETUP_LOCK])
            for name in EXTENSIONS:
                conn.execute(
                    sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(name))
                )
            current = _table_info(conn)
            if current is not None and current.matches(model, wanted_digest):
                conn.rollback()
                return SetupOutcome(created=False, table=current)
            batches = _fill(conn, model, chosen)
            table = TableInfo(
                model=model.uri,
                dimensions=model.dimensions,
                documents=len(chosen),
                sha256=wanted_digest,
                query_function=query_function(model),
                indexed=True,
            )
            made = dataclasses.asdict(table)
            del made["indexed"]
            conn.execute(
                sql.SQL("COMMENT ON TABLE {} IS {}").format(
                    sql.Identifier(TABLE), sql.Literal(json.dumps(made))
                )
            )
            conn.execute(f"ANALYZE {TABLE}")
            conn.commit()
    except psycopg.errors.InsufficientPrivilege as exc:
        raise DemoError(error_text(exc), not_allowed=list(EXTENSIONS)) from None
    except psycopg.Error as exc:
        raise DemoError(f"Creating the sample table failed: {error_text(exc)}") from None
    except ServerError as exc:
        raise DemoError(str(exc), status=503) from None
    return SetupOutcome(
        created=True, table=table, batches=batches, seconds=time.perf_counter() - started
    )


def search_sql(function: str, model: str, query: str, k: int) -> str:
    """The search statement with its values written in as SQL constants."""
    return (
        SEARCH.format(
            function=function, model=sql_literal(model), query=sql_literal(query), k=int(k)
        )
        + ";"
    )


def _connect_demo(server: ManagedServer) -> psycopg.Connection:
    try:
        return server.connect(DATABASE, connect_timeout=RENDER_TIMEOUT_S)
    except ServerError:
        with server.connect(connect_timeout=RENDER_TIMEOUT_S) as conn:
            if not _database_exists(conn):
                raise DemoError(NOT_SET_UP) from None
        raise


@contextlib.contextmanager
def _searching() -> Iterator[tuple[psycopg.Connection, TableInfo]]:
    """The demo's database and its sample table, under the search's statement timeout; what
    fails there comes out as DemoError (a DemoError raised inside passes through)."""
    try:
        with _connect_demo(get_managed_server()) as conn:
            table = _table_info(conn)
            if table is None:
                raise DemoError(NOT_SET_UP)
            conn.execute(f"SET statement_timeout = {int(SEARCH_TIMEOUT_S * 1000)}")
            yield conn, table
    except psycopg.Error as exc:
        raise DemoError(f"The search failed: {error_text(exc)}") from None
    except ServerError as exc:
        raise DemoError(str(exc), status=503) from None


def search(query: str, k: int = DEFAULT_K) -> SearchResult:
    """The ``k`` sample documents nearest to ``query``, found by SQL on the managed server."""
    with _searching() as (conn, table):
        statement = SEARCH.format(function=table.query_function, model="%s", query="%s", k="%s")
        started = time.perf_counter()
        rows = conn.execute(statement, [table.model, query, k]).fetchall()
        elapsed = time.perf_counter() - started
    return SearchResult(
        query=query,
        k=k,
        model=table.model,
        sql=search_sql(table.query_function, table.model, query, k),
        matches=[Match(*row[:4], similarity=float(row[4])) for row in rows],
        elapsed_ms=elapsed * 1000,
    )


# -- hybrid search + rerank --------------------------------------------------------------------


@dataclass(frozen=True)
class StageItem:
    """A document in one stage's list."""

    id: int
    lang: str
    topic: str
    body: str
    rank: int  # its place in this list, from 1
    score: float  # ts_rank, cosine similarity, RRF score or relevance score
    fulltext_rank: int | None = None  # fused: its place in the full-text list (None: absent)
    vector_rank: int | None = None  # fused: its place in the vector list
    fused_rank: int | None = None  # reranked: its place in the fused list
    bar: float = 0.0  # reranked: the score's bar, in percent

    @property
    def language(self) -> str:
        return samples().language_names.get(self.lang, self.lang)

    @property
    def moved(self) -> int:
        """Reranked: places gained over the fused list (negative: lost)."""
        return (self.fused_rank or self.rank) - self.rank

    @property
    def moved_by(self) -> int:
        return abs(self.moved)


@dataclass(frozen=True)
class Stage:
    key: str  # "fulltext" | "vector" | "fused" | "reranked"
    title: str
    score_name: str  # what ``score`` is
    sql: str  # the statement run, with its values written in, ready to copy
    elapsed_ms: float  # its round trip
    items: list[StageItem]

    @property
    def ids(self) -> list[int]:
        return [item.id for item in self.items]


@dataclass(frozen=True)
class HybridResult:
    query: str
    model: str  # the table's embedding model
    reranker: str
    candidates: int  # documents in either candidate list (the fused list keeps RERANK_TOP)
    fulltext: Stage
    vector: Stage
    fused: Stage
    reranked: Stage

    rrf_k: int = RRF_K
    rerank_top: int = RERANK_TOP

    @property
    def stages(self) -> list[Stage]:
        return [self.fulltext, self.vector, self.fused, self.reranked]

    @property
    def elapsed_ms(self) -> float:
        return sum(stage.elapsed_ms for stage in self.stages)


def score_bars(scores: Sequence[float]) -> tuple[float, float, list[float]]:
    """The bars' scale and each score's bar in percent: scores within [0, 1] (a one-label
    cross-encoder's sigmoid) on 0..1; others (raw logits) from the lowest to the highest."""
    low, high = 0.0, 1.0
    if scores and (min(scores) < 0.0 or max(scores) > 1.0):
        low, high = min(scores), max(scores)
    span = (high - low) or 1.0
    return low, high, [max(0.0, min(100.0, (s - low) / span * 100.0)) for s in scores]


def hybrid_sql(function: str, model: str, query: str) -> dict[str, str]:
    """The candidate and fusion statements, with their values written in."""
    values = {"function": function, "model": sql_literal(model), "query": sql_literal(query)}
    return {
        "fulltext": FULLTEXT_SEARCH.format(**values) + ";",
        "vector": VECTOR_SEARCH.format(**values) + ";",
        "fused": FUSED_SEARCH.format(**values) + ";",
    }


def rerank_sql(reranker: str, query: str, ids: Sequence[int]) -> str:
    """The rerank statement with its values written in."""
    array = "ARRAY[" + ", ".join(str(int(i)) for i in ids) + "]::integer[]"
    return (
        RERANK.format(
            ids=array, query=sql_literal(query), reranker=sql_literal(reranker), timeout=""
        )
        + ";"
    )


def _timed(
    conn: psycopg.Connection, statement: str, params: dict[str, object]
) -> tuple[list, float]:
    started = time.perf_counter()
    rows = conn.execute(statement, params).fetchall()
    return rows, (time.perf_counter() - started) * 1000


def hybrid_search(query: str, reranker: str) -> HybridResult:
    """``query`` through the four stages (full text, vector, fused, reranked by
    ``reranker``), each one statement on the managed server."""
    timeout_ms = int(SEARCH_TIMEOUT_S * 1000)
    with _searching() as (conn, table):
        function = table.query_function
        placeholders = {name: f"%({name})s" for name in ("model", "query")}
        params: dict[str, object] = {"model": table.model, "query": query}

        def run(template: str) -> tuple[list, float]:
            statement = template.format(function=function, **placeholders)
            return _timed(conn, statement, params)

        fulltext_rows, fulltext_ms = run(FULLTEXT_SEARCH)
        vector_rows, vector_ms = run(VECTOR_SEARCH)
        fused_rows, fused_ms = run(FUSED_SEARCH)
        ids = [int(row[0]) for row in fused_rows]
        reranked_rows: list = []
        reranked_ms = 0.0
        if ids:  # (rank() refuses an empty list; a table with documents always has some)
            try:
                reranked_rows, reranked_ms = _timed(
                    conn,
                    RERANK.format(
                        ids="%(ids)s::integer[]",
                        query="%(query)s",
                        reranker="%(reranker)s",
                        timeout=",\n       timeout_ms => %(timeout_ms)s",
                    ),
                    {"ids": ids, "query": query, "reranker": reranker, "timeout_ms": timeout_ms},
                )
            except psycopg.errors.UndefinedFunction as exc:
                raise DemoError(
                    f"The search failed: {error_text(exc)}. Database {DATABASE} may have an "
                    "azure_local_ai older than 1.1.0, which has no rank(): update it with ALTER "
                    "EXTENSION azure_local_ai UPDATE, or re-create the sample table."
                ) from None

    def item(row: Sequence, **extra: object) -> StageItem:
        return StageItem(
            id=int(row[0]),
            rank=int(row[1]),
            score=float(row[2]),
            lang=row[-3],
            topic=row[-2],
            body=row[-1],
            **extra,  # type: ignore[arg-type]
        )

    fused_items = [item(row, fulltext_rank=row[3], vector_rank=row[4]) for row in fused_rows]
    by_id = {i.id: i for i in fused_items}
    _, _, widths = score_bars([float(score) for _, _, score in reranked_rows])
    reranked_items = [
        dataclasses.replace(
            by_id[int(document_id)],
            rank=int(position),
            score=float(score),
            fulltext_rank=None,
            vector_rank=None,
            fused_rank=by_id[int(document_id)].rank,
            bar=width,
        )
        for (document_id, position, score), width in zip(reranked_rows, widths, strict=True)
    ]
    shown = hybrid_sql(function, table.model, query)
    return HybridResult(
        query=query,
        model=table.model,
        reranker=reranker,
        candidates=int(fused_rows[0][5]) if fused_rows else 0,
        fulltext=Stage(
            "fulltext", "Full text", "ts_rank", shown["fulltext"], fulltext_ms,
            [item(row) for row in fulltext_rows],
        ),
        vector=Stage(
            "vector", "Vector", "cosine similarity", shown["vector"], vector_ms,
            [item(row) for row in vector_rows],
        ),
        fused=Stage("fused", "Fused (RRF)", "RRF score", shown["fused"], fused_ms, fused_items),
        reranked=Stage(
            "reranked", "Reranked", "relevance score", rerank_sql(reranker, query, ids),
            reranked_ms, reranked_items,
        ),
    )  # fmt: skip
