"""azure_local_ai.rank() from SQL.

Against a fake service that records requests: every refusal of the arguments comes before any
request, rows come best first with the right ids and ranks, documents are batched with the query
in each request, malformed answers, error codes and interrupts give their SQLSTATEs. Against the
session's sidecar: random-weight cross-encoders (BERT with token type ids, XLM-RoBERTa without)
added like any model, whose rank() equals ``CrossEncoder.predict``; the default reranker
setting; an embedding model or an unknown one refused. And ``ALTER EXTENSION ... UPDATE`` from
1.0.0 gives rank().
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg import errors

from serverparams.server import ManagedServer
from tests.extension.conftest import FRESH_DB, TINY_URI, service_url
from tests.extension.fakeservice import FakeService, fake_service
from tests.extension.test_failures import INTERRUPT_BOUND_S, run_in_thread, wait_until_active
from tests.fixtures.pg import allow_extensions
from tests.fixtures.rerankers import Reranker, deploy_reranker
from tests.fixtures.sidecar import SidecarProcess

RANK = "SELECT * FROM azure_local_ai.rank"
LONG_URI = "x" * 600


def assert_alive(conn: psycopg.Connection, pid: int) -> None:
    """The same backend (it did not crash) answers."""
    assert conn.execute("SELECT pg_backend_pid(), 1").fetchone() == (pid, 1)


@pytest.fixture
def rerank_fake(conn: psycopg.Connection) -> Iterator[FakeService]:
    """A fake rerank route (score: the document's length) that the module calls."""
    with fake_service("rerank") as fake, service_url(conn, fake.url):
        yield fake


# -- arguments, refused before any request ----------------------------------------------------


@pytest.mark.parametrize(
    ("query", "sqlstate", "words"),
    [
        (f"{RANK}(NULL, ARRAY['a'])", "22004", ["query must not be NULL"]),
        (f"{RANK}('q', NULL)", "22004", ["document_contents must not be NULL"]),
        (f"{RANK}('q', ARRAY[]::text[])", "22023", ["document_contents must not be empty"]),
        (f"{RANK}('q', ARRAY['a', NULL, 'c'])", "22004", ["document_contents", "element 2"]),
        (f"{RANK}('q', ARRAY[NULL]::text[])", "22004", ["document_contents", "element 1"]),
        (RANK + "('q', '{{a,b},{c,d}}'::text[])", "2202E", ["one-dimensional", "2 dim"]),
        (
            f"{RANK}('q', ARRAY['a', 'b', 'c'], ARRAY['x', 'y'])",
            "2202E",
            ["same number", "2 document_ids and 3 document_contents"],
        ),
        (
            f"{RANK}('q', ARRAY['a'], ARRAY[]::text[])",
            "2202E",
            ["0 document_ids and 1 document_contents"],
        ),
        (RANK + "('q', ARRAY['a', 'b'], '{{x},{y}}')", "2202E", ["document_ids", "2 dim"]),
        (f"{RANK}('q', ARRAY['a', 'b'], ARRAY['x', NULL])", "22004", ["document_ids", "element 2"]),
        (f"{RANK}('q', ARRAY['a'], model => '')", "22023", ["model must not be empty"]),
        (f"{RANK}('q', ARRAY['a'], model => '{LONG_URI}')", "22023", ["600 bytes"]),
        (f"{RANK}('q', ARRAY['a'], timeout_ms => 0)", "22023", ["timeout_ms"]),
        (f"{RANK}('q', ARRAY['a'], timeout_ms => -5)", "22023", ["timeout_ms"]),
        (f"{RANK}('q', ARRAY['a'], timeout_ms => NULL)", "22004", ["timeout_ms"]),
    ],
)
def test_malformed_arguments_are_refused_before_any_request(
    conn: psycopg.Connection, rerank_fake: FakeService, query: str, sqlstate: str, words: list[str]
) -> None:
    (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()
    with pytest.raises(psycopg.Error) as info:
        conn.execute(query)
    assert info.value.sqlstate == sqlstate, info.value.diag.message_primary
    for word in words:
        assert word in info.value.diag.message_primary
    assert rerank_fake.connections == 0
    assert rerank_fake.requests == []
    assert_alive(conn, pid)


def test_a_null_element_message_counts_positions_from_one_whatever_the_lower_bound(
    conn: psycopg.Connection, rerank_fake: FakeService
) -> None:
    with pytest.raises(errors.NullValueNotAllowed) as info:
        conn.execute(RANK + "('q', '[0:2]={a,b,NULL}'::text[])")
    assert "element 3" in info.value.diag.message_primary
    assert info.value.diag.message_detail == "Positions count from 1."
    assert rerank_fake.connections == 0


def test_the_signature_defaults_and_properties(conn: psycopg.Connection) -> None:
    row = conn.execute(
        """
        SELECT pg_get_function_arguments(p.oid), pg_get_function_result(p.oid),
               p.proisstrict, p.provolatile, p.proparallel, p.proretset
          FROM pg_proc p
         WHERE p.oid = 'azure_local_ai.rank(text, text[], text[], text, integer)'::regprocedure
        """
    ).fetchone()
    assert row == (
        "query text, document_contents text[], document_ids text[] DEFAULT NULL::text[], "
        "model text DEFAULT NULL::text, timeout_ms integer DEFAULT 3600000",
        "TABLE(document_id text, rank integer, relevance_score real)",
        False,
        "v",
        "s",
        True,
    )


# -- rows and requests, against the fake rerank route ---------------------------------------


def test_rows_come_best_first_with_positions_as_ids(
    conn: psycopg.Connection, rerank_fake: FakeService
) -> None:
    rows = conn.execute(f"{RANK}('which is longest?', ARRAY['aa', 'a', 'aaaa', ''])").fetchall()
    assert rows == [("3", 1, 4.0), ("1", 2, 2.0), ("2", 3, 1.0), ("4", 4, 0.0)]
    # one request: the query, then the documents (the empty one too), and no model parameter
    assert rerank_fake.requests == [["which is longest?", "aa", "a", "aaaa", ""]]
    assert rerank_fake.targets == ["/internal/rerank"]


def test_custom_ids_are_carried_and_the_model_travels_escaped(
    conn: psycopg.Connection, rerank_fake: FakeService
) -> None:
    rows = conn.execute(
        "SELECT document_id, rank FROM azure_local_ai.rank("
        "'q', ARRAY['bb', 'ccc', 'a'], ARRAY['doc-b', 'doc-c', 'doc-a'], 'my ranker/x:v1')"
    ).fetchall()
    assert rows == [("doc-c", 1), ("doc-b", 2), ("doc-a", 3)]
    assert rerank_fake.targets == ["/internal/rerank?model=my%20ranker%2Fx%3Av1"]


def test_ties_keep_input_order_and_nan_comes_last(
    conn: psycopg.Connection, rerank_fake: FakeService
) -> None:
    rerank_fake.score = lambda query, document: (
        math.nan if document.startswith("nan") else 1.0 if document.startswith("hi") else 0.5
    )
    documents = ["lo-1", "nan-1", "hi-1", "lo-2", "hi-2", "nan-2", "hi-3"]
    rows = conn.execute(
        "SELECT document_id, rank, relevance_score FROM azure_local_ai.rank('q', %s::text[],"
        " %s::text[])",
        [documents, documents],
    ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [
        ("hi-1", 1),
        ("hi-2", 2),
        ("hi-3", 3),
        ("lo-1", 4),
        ("lo-2", 5),
        ("nan-1", 6),
        ("nan-2", 7),
    ]
    assert math.isnan(rows[-1][2])


def test_many_documents_go_in_batches_each_with_the_query(
    conn: psycopg.Connection, rerank_fake: FakeService
) -> None:
    documents = ["x" * (i % 97) + f"#{i}" for i in range(300)]
    rows = conn.execute(
        "SELECT document_id, rank, relevance_score FROM azure_local_ai.rank('the query', %s)",
        [documents],
    ).fetchall()
    assert [len(r) - 1 for r in rerank_fake.requests] == [128, 128, 44]
    assert all(r[0] == "the query" for r in rerank_fake.requests)
    assert [d for r in rerank_fake.requests for d in r[1:]] == documents
    lengths = np.array([len(d) for d in documents], dtype=np.float32)
    expected = sorted(range(300), key=lambda i: (-lengths[i], i))
    assert [r[0] for r in rows] == [str(i + 1) for i in expected]
    assert [r[1] for r in rows] == list(range(1, 301))
    assert [r[2] for r in rows] == [float(lengths[i]) for i in expected]


def test_texts_travel_as_utf8_and_an_empty_query_is_sent(
    conn: psycopg.Connection, rerank_fake: FakeService
) -> None:
    rows = conn.execute(f"{RANK}('', ARRAY['Grüße', '数据库'])").fetchall()
    assert rerank_fake.requests == [["", "Grüße", "数据库"]]
    assert [r[0] for r in rows] == ["1", "2"]  # five characters, then three


def test_rank_works_in_a_lateral_join_over_a_candidate_set(
    conn: psycopg.Connection, rerank_fake: FakeService
) -> None:
    rows = conn.execute(
        """
        WITH candidates(id, body) AS (VALUES (10, 'a'), (20, 'abc'), (30, 'ab'))
        SELECT c.id, r.rank
          FROM azure_local_ai.rank('q', (SELECT array_agg(body ORDER BY id) FROM candidates),
                                   (SELECT array_agg(id::text ORDER BY id) FROM candidates)) r
          JOIN candidates c ON c.id::text = r.document_id
         ORDER BY r.rank
        """
    ).fetchall()
    assert rows == [(20, 1), (30, 2), (10, 3)]


# -- answers and failures of the service ---------------------------------------------------------


@pytest.mark.parametrize("behaviour", ["rerank_wrong_count", "short_binary"])
def test_a_malformed_answer_is_a_protocol_violation(
    conn: psycopg.Connection, behaviour: str
) -> None:
    (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()
    with fake_service(behaviour) as fake, service_url(conn, fake.url):
        with pytest.raises(errors.ProtocolViolation) as info:
            conn.execute(f"{RANK}('q', ARRAY['a', 'b'])")
        assert "malformed rerank response" in info.value.diag.message_primary
        assert fake.url in info.value.diag.message_primary
        if behaviour == "rerank_wrong_count":
            assert info.value.diag.message_detail == (
                "Asked for 2 scores; the response declares 3 in 16 bytes."
            )
    assert_alive(conn, pid)


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (400, "wrong_model_kind", errors.WrongObjectType),
        (404, "model_not_found", errors.UndefinedObject),
        (409, "model_not_loaded", errors.ObjectNotInPrerequisiteState),
        (504, "timeout", errors.QueryCanceled),
        (413, "too_many_inputs", errors.ProgramLimitExceeded),
    ],
)
def test_error_codes_of_the_service_give_their_sqlstates(
    conn: psycopg.Connection, status: int, code: str, error: type[psycopg.Error]
) -> None:
    message = f"the service says {code}"
    with (
        fake_service("error", error=(status, code, message)) as fake,
        service_url(conn, fake.url),
        pytest.raises(error) as info,
    ):
        conn.execute(f"{RANK}('q', ARRAY['a'], model => 'm:v1')")
    diag = info.value.diag
    assert diag.message_primary == message
    assert diag.message_detail == (
        f"The inference service at {fake.url} answered HTTP {status}, code {code}."
    )
    if code == "wrong_model_kind":
        assert info.value.sqlstate == "42809"
        assert "reranker (a cross-encoder)" in diag.message_hint
        assert "model_metadata" in diag.message_hint


def test_timeout_ms_bounds_a_stalled_call(conn: psycopg.Connection) -> None:
    (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()
    with fake_service("stall") as fake, service_url(conn, fake.url):
        started = time.monotonic()
        with pytest.raises(errors.QueryCanceled) as info:
            conn.execute(f"{RANK}('q', ARRAY['a'], timeout_ms => 300)")
        assert time.monotonic() - started < INTERRUPT_BOUND_S
        assert "timeout_ms = 300" in info.value.diag.message_primary
    assert_alive(conn, pid)


def test_statement_timeout_interrupts_a_stalled_call(conn: psycopg.Connection) -> None:
    (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()
    with fake_service("stall") as fake, service_url(conn, fake.url):
        conn.execute("SET statement_timeout = 200")
        try:
            thread, outcome = run_in_thread(
                lambda: conn.execute(f"{RANK}('q', ARRAY['a', 'b'])").fetchall()
            )
            thread.join(INTERRUPT_BOUND_S)
            assert not thread.is_alive(), "statement_timeout did not stop the call"
            assert isinstance(outcome["error"], errors.QueryCanceled)
            assert "statement timeout" in str(outcome["error"])
            assert fake.connections >= 1  # it was in flight, not refused before
        finally:
            conn.execute("RESET statement_timeout")
    assert_alive(conn, pid)


def test_cancel_interrupts_a_stalled_call(
    conn: psycopg.Connection, managed_pg: ManagedServer, ext_db: str
) -> None:
    (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()
    with fake_service("stall") as fake, service_url(conn, fake.url):
        thread, outcome = run_in_thread(
            lambda: conn.execute(f"{RANK}('q', ARRAY['a', 'b'])").fetchall()
        )
        wait_until_active(managed_pg, ext_db, pid)
        deadline = time.monotonic() + INTERRUPT_BOUND_S
        while fake.connections == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fake.connections >= 1
        started = time.monotonic()
        with managed_pg.connect(ext_db) as other:
            assert other.execute("SELECT pg_cancel_backend(%s)", [pid]).fetchone() == (True,)
        thread.join(INTERRUPT_BOUND_S)
        assert not thread.is_alive(), "pg_cancel_backend did not stop the call"
        assert time.monotonic() - started < 2.0
        assert isinstance(outcome["error"], errors.QueryCanceled)
    assert_alive(conn, pid)
    # and the module still reaches the real sidecar
    row = conn.execute(
        "SELECT array_length(azure_local_ai.create_embeddings(%s, 'a cat'), 1)", [TINY_URI]
    ).fetchone()
    assert row == (32,)


# -- versions ----------------------------------------------------------------------------------

FUNCTIONS = """
SELECT p.oid::regprocedure::text, pg_get_function_arguments(p.oid),
       pg_get_function_result(p.oid), p.prosrc, p.proisstrict, p.provolatile, p.proparallel,
       p.prorows, p.proconfig, obj_description(p.oid, 'pg_proc')
  FROM pg_proc p
 WHERE p.pronamespace = 'azure_local_ai'::regnamespace
 ORDER BY 1, 2
"""


def test_update_from_1_0_0_gives_what_a_fresh_install_has(
    conn: psycopg.Connection, db: psycopg.Connection, rerank_fake: FakeService
) -> None:
    assert conn.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'azure_local_ai'"
    ).fetchone() == ("1.1.0",)
    allow_extensions(db, "azure_local_ai")
    db.execute("CREATE EXTENSION azure_local_ai VERSION '1.0.0'")
    assert db.execute("SELECT to_regproc('azure_local_ai.rank')").fetchone() == (None,)
    db.execute("ALTER EXTENSION azure_local_ai UPDATE TO '1.1.0'")
    assert db.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'azure_local_ai'"
    ).fetchone() == ("1.1.0",)
    assert db.execute(FUNCTIONS).fetchall() == conn.execute(FUNCTIONS).fetchall()
    # rank is a member of the extension, and works
    assert db.execute(
        """
        SELECT count(*) FROM pg_depend
         WHERE objid = 'azure_local_ai.rank(text, text[], text[], text, integer)'::regprocedure
           AND deptype = 'e'
        """
    ).fetchone() == (1,)
    assert db.info.dbname == FRESH_DB
    assert db.execute(f"{RANK}('q', ARRAY['a', 'bb'])").fetchall() == [
        ("2", 1, 2.0),
        ("1", 2, 1.0),
    ]
    assert db.execute("SELECT azure_local_ai.version()").fetchone() == ("1.1.0",)


def test_available_versions_and_update_path(conn: psycopg.Connection) -> None:
    versions = conn.execute(
        "SELECT version FROM pg_available_extension_versions"
        " WHERE name = 'azure_local_ai' ORDER BY version"
    ).fetchall()
    assert versions == [("1.0.0",), ("1.1.0",)]
    path = conn.execute(
        "SELECT path FROM pg_extension_update_paths('azure_local_ai')"
        " WHERE source = '1.0.0' AND target = '1.1.0'"
    ).fetchone()
    assert path == ("1.0.0--1.1.0",)


# -- the real sidecar: random-weight cross-encoders added like any model -------------------------

QUERY = "How does PostgreSQL search vectors?"
DOCUMENTS = [
    "PostgreSQL stores each embedding beside the row it describes.",
    "Le chat dort sur le canapé.",
    "passage: PostgreSQL searches embeddings in a vector column with an index.",
    "数据库中的向量搜索",
    "x",
    "",
    "The quick brown fox jumps over the lazy dog.",
    "Die Datenbank speichert Vektoren für die semantische Suche.",
]
# Far past the models' 128 tokens: cut as CrossEncoder cuts the pair.
LONG_DOCUMENT = "The database server runs on a small computer by the river. " * 60
ARCHS = ("bert", "xlm-roberta")
README = Path(__file__).resolve().parents[2] / "extension" / "README.md"


@pytest.fixture(scope="module")
def rerankers(
    tmp_path_factory: pytest.TempPathFactory,
    managed_pg: ManagedServer,
    ext_db: str,
    sidecar: SidecarProcess,
) -> Iterator[dict[str, Reranker]]:
    """A sharpened cross-encoder of each architecture (BERT with token type ids, XLM-RoBERTa
    without), added, deployed with its parity gate and registered from SQL; unregistered
    afterwards."""
    root = tmp_path_factory.mktemp("rerankers")
    made = {arch: deploy_reranker(root / arch, arch, f"rank-{arch}:v1") for arch in ARCHS}
    with managed_pg.connect(ext_db) as conn:
        for reranker in made.values():
            conn.execute(
                "SELECT azure_local_ai.model_register(%s, %s)",
                [reranker.uri, str(reranker.stored.path)],
            )
    yield made
    for reranker in made.values():
        sidecar.client.unregister(reranker.uri)


@pytest.fixture
def bert(rerankers: dict[str, Reranker]) -> Reranker:
    return rerankers["bert"]


@contextmanager
def sidecar_settings(conn: psycopg.Connection, **values: str) -> Iterator[None]:
    """Change inference settings for a block; they are put back afterwards."""
    keys = list(values)
    (before,) = conn.execute("SELECT azure_local_ai.get_setting(%s::text[])", [keys]).fetchone()
    conn.execute(
        "SELECT azure_local_ai.set_setting(%s::text[], %s::text[])", [keys, list(values.values())]
    )
    try:
        yield
    finally:
        conn.execute(
            "SELECT azure_local_ai.set_setting(%s::text[], %s::text[])",
            [
                keys,
                [
                    str(before[k]).lower() if isinstance(before[k], bool) else str(before[k])
                    for k in keys
                ],
            ],
        )


def sql_rank(
    conn: psycopg.Connection,
    query: str,
    documents: list[str],
    model: str | None,
    ids: list[str] | None = None,
) -> list[tuple[str, int, float]]:
    return conn.execute(
        "SELECT document_id, rank, relevance_score FROM azure_local_ai.rank("
        "%s, %s::text[], %s::text[], %s)",
        [query, documents, ids, model],
    ).fetchall()


def assert_ranked_like(
    rows: list[tuple[str, int, float]], expected: np.ndarray, exact_order: bool = True
) -> None:
    """rows (ids: positions from 1) rank the documents as the reference scores them: the same
    scores within 1e-4, ranks 1..n, best first; with exact_order, in the reference's order."""
    assert [r[1] for r in rows] == list(range(1, len(expected) + 1))
    got = np.full(len(expected), np.nan, dtype=np.float32)
    for document_id, _, score in rows:
        got[int(document_id) - 1] = score
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    order = [int(r[0]) - 1 for r in rows]
    assert order == sorted(range(len(got)), key=lambda i: (-got[i], i))  # ties: input order
    if exact_order:
        assert order == sorted(range(len(expected)), key=lambda i: (-expected[i], i))
    else:  # near-equal scores may swap; the order holds to the tolerance
        ranked = expected[order]
        assert np.all(ranked[:-1] >= ranked[1:] - 1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_rank_equals_cross_encoder_predict(
    conn: psycopg.Connection, rerankers: dict[str, Reranker], arch: str
) -> None:
    reranker = rerankers[arch]
    documents = [*DOCUMENTS, LONG_DOCUMENT]
    expected = reranker.predict(QUERY, documents)
    assert np.ptp(expected) > 0.005  # the sharpened model tells the documents apart
    rows = sql_rank(conn, QUERY, documents, reranker.uri)
    assert_ranked_like(rows, expected)
    # a long query and a long document share the room, as CrossEncoder shares it
    rows = sql_rank(conn, LONG_DOCUMENT, [QUERY, LONG_DOCUMENT[::-1]], reranker.uri)
    assert_ranked_like(rows, reranker.predict(LONG_DOCUMENT, [QUERY, LONG_DOCUMENT[::-1]]))


def test_custom_ids_are_carried_best_first(conn: psycopg.Connection, bert: Reranker) -> None:
    ids = [f"doc-{i}" for i in range(len(DOCUMENTS))]
    expected = bert.predict(QUERY, DOCUMENTS)
    rows = sql_rank(conn, QUERY, DOCUMENTS, bert.uri, ids)
    order = sorted(range(len(DOCUMENTS)), key=lambda i: (-expected[i], i))
    assert [r[0] for r in rows] == [ids[i] for i in order]
    np.testing.assert_allclose([r[2] for r in rows], expected[order], atol=1e-4)


def test_two_hundred_documents_in_one_call(conn: psycopg.Connection, bert: Reranker) -> None:
    words = " ".join(DOCUMENTS).split()
    documents = [" ".join(words[i % len(words) :][: 1 + i % 23]) + f" {i}" for i in range(200)]
    rows = sql_rank(conn, QUERY, documents, bert.uri)
    assert len(rows) == 200
    assert_ranked_like(rows, bert.predict(QUERY, documents), exact_order=False)


def test_model_metadata_shows_a_reranker(conn: psycopg.Connection, bert: Reranker) -> None:
    (metadata,) = conn.execute("SELECT azure_local_ai.model_metadata(%s)", [bert.uri]).fetchone()
    assert metadata["kind"] == "reranker"
    assert metadata["loaded"] is True


def test_without_a_model_the_default_rerank_model_setting_is_used(
    conn: psycopg.Connection, rerankers: dict[str, Reranker]
) -> None:
    reranker = rerankers["xlm-roberta"]
    expected = sql_rank(conn, QUERY, DOCUMENTS, reranker.uri)
    with sidecar_settings(conn, default_rerank_model=reranker.uri):
        assert conn.execute(
            "SELECT azure_local_ai.get_setting('default_rerank_model')"
        ).fetchone() == (reranker.uri,)
        assert sql_rank(conn, QUERY, DOCUMENTS, None) == expected
        assert conn.execute(
            "SELECT count(*) FROM azure_local_ai.rank(%s, %s)", [QUERY, DOCUMENTS]
        ).fetchone() == (len(DOCUMENTS),)
    with sidecar_settings(conn, default_rerank_model=""):
        with pytest.raises(errors.InvalidParameterValue) as info:
            sql_rank(conn, QUERY, DOCUMENTS, None)
        message = info.value.diag.message_primary
        assert "default_rerank_model is empty" in message
        assert "set_setting('default_rerank_model'" in message


def test_a_model_of_the_wrong_kind_is_refused_naming_its_kind(
    conn: psycopg.Connection, bert: Reranker
) -> None:
    with pytest.raises(errors.WrongObjectType) as info:
        sql_rank(conn, QUERY, DOCUMENTS, TINY_URI)
    assert info.value.sqlstate == "42809"
    assert f"model {TINY_URI} is an embedding model" in info.value.diag.message_primary
    assert "model_metadata" in info.value.diag.message_hint
    # and a reranker given to create_embeddings
    with pytest.raises(errors.WrongObjectType) as info:
        conn.execute("SELECT azure_local_ai.create_embeddings(%s, 'a cat')", [bert.uri])
    assert f"model {bert.uri} is a reranker" in info.value.diag.message_primary


def test_an_unknown_model_and_an_empty_query_are_refused(
    conn: psycopg.Connection, bert: Reranker
) -> None:
    with pytest.raises(errors.UndefinedObject):
        sql_rank(conn, QUERY, DOCUMENTS, "no-such-reranker:v1")
    with pytest.raises(errors.InvalidParameterValue) as info:
        sql_rank(conn, "", DOCUMENTS, bert.uri)
    assert "query" in info.value.diag.message_primary


@pytest.mark.parametrize("how", ["cancel", "statement_timeout"])
def test_a_slow_real_call_is_interrupted_and_the_session_goes_on(
    conn: psycopg.Connection, managed_pg: ManagedServer, ext_db: str, bert: Reranker, how: str
) -> None:
    (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()
    # one pair per model run: some seconds for these documents
    documents = [f"{i} {LONG_DOCUMENT}" for i in range(4000)]
    with sidecar_settings(conn, max_batch_size="1"):
        if how == "statement_timeout":
            conn.execute("SET statement_timeout = 500")
        try:
            thread, outcome = run_in_thread(lambda: sql_rank(conn, QUERY, documents, bert.uri))
            if how == "cancel":
                wait_until_active(managed_pg, ext_db, pid)
                time.sleep(0.5)
                with managed_pg.connect(ext_db) as other:
                    assert other.execute("SELECT pg_cancel_backend(%s)", [pid]).fetchone() == (
                        True,
                    )
            thread.join(INTERRUPT_BOUND_S)
            assert not thread.is_alive(), f"{how} did not stop the call"
            assert isinstance(outcome.get("error"), errors.QueryCanceled), outcome
            assert outcome["elapsed"] < 3.0, outcome["elapsed"]
        finally:
            conn.execute("RESET statement_timeout")
    assert_alive(conn, pid)
    assert_ranked_like(sql_rank(conn, QUERY, DOCUMENTS, bert.uri), bert.predict(QUERY, DOCUMENTS))


def test_the_readme_hybrid_retrieval_example_runs(conn: psycopg.Connection, bert: Reranker) -> None:
    text = README.read_text()
    example = re.search(r"Hybrid retrieval.*?```sql\n(.*?)```", text, re.S)
    assert example, "the README's hybrid retrieval example"
    query = (
        example.group(1)
        .replace("'multilingual-e5-small:v1'", "%(embedder)s")
        .replace("'my-reranker:v1'", "%(reranker)s")
    )
    conn.execute(
        "CREATE TEMP TABLE docs (id int PRIMARY KEY, body text, embedding vector(32),"
        " tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', body)) STORED)"
    )
    bodies = [d for d in DOCUMENTS if d] + ["Vectors in PostgreSQL are searched with pgvector."]
    for i, body in enumerate(bodies, start=1):
        conn.execute(
            "INSERT INTO docs VALUES (%s, %s, azure_local_ai.create_embeddings(%s, %s)::vector)",
            [i, body, TINY_URI, body],
        )
    rows = conn.execute(query, {"embedder": TINY_URI, "reranker": bert.uri}).fetchall()
    # every document is a candidate of the nearest 50: all come back, ranked by the reranker
    assert [r[1] for r in rows] == list(range(1, min(10, len(bodies)) + 1))
    question = re.search(r"SELECT '([^']*)' AS text", query).group(1)
    expected = bert.predict(question, bodies)
    order = sorted(range(len(bodies)), key=lambda i: (-expected[i], i))[:10]
    assert [r[0] for r in rows] == [i + 1 for i in order]
    assert [r[3] for r in rows] == [bodies[i] for i in order]
