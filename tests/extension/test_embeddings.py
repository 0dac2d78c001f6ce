"""Embeddings from SQL: every overload, against the real sidecar and the tiny model, and the
cloud product's documented examples (generated column, array and ids overloads, cosine
similarity, HNSW index)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg import errors, sql

from serverparams.server import ManagedServer
from tests.extension.conftest import TINY_DIMS, TINY_URI, service_url
from tests.extension.fakeservice import fake_service
from tests.fixtures.sidecar import SidecarProcess, make_store_dir, start_sidecar

TEXTS = ["the cat sat on the house", "a dog in the river", "postgres vector search", "hello"]


PREFIXED_URI = "tiny-sql-prefixed:v1"


def sidecar_vectors(
    sidecar: SidecarProcess, texts: list[str], uri: str = TINY_URI, input_type: str | None = None
) -> np.ndarray:
    """What the sidecar's OpenAI-compatible /v1/embeddings answers."""
    vectors, _ = sidecar.client.embed(uri, texts, input_type=input_type)
    return vectors


@pytest.fixture(scope="module")
def prefixed_model(
    sidecar: SidecarProcess,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    managed_pg,
    ext_db: str,
) -> Iterator[str]:
    """The tiny model as a store directory with e5-style prefixes, registered from SQL.

    The sidecar is shared by the whole test session: the model is unregistered afterwards."""
    store_dir = make_store_dir(
        tiny_model_dir, tmp_path_factory.mktemp("prefixed") / "model", uri=PREFIXED_URI
    )
    with managed_pg.connect(ext_db) as conn:
        model_id = conn.execute(
            "SELECT azure_local_ai.model_register(%s, %s)", [PREFIXED_URI, str(store_dir)]
        ).fetchone()[0]
        again = conn.execute(
            "SELECT azure_local_ai.model_register(%s, %s)", [PREFIXED_URI, str(store_dir)]
        ).fetchone()[0]
    assert isinstance(model_id, int)
    assert again == model_id  # registering the same files again is idempotent
    yield PREFIXED_URI
    sidecar.client.unregister(PREFIXED_URI)


def test_single_text_matches_the_sidecar_api(conn: psycopg.Connection, sidecar) -> None:
    expected = sidecar_vectors(sidecar, TEXTS)
    for text, vector in zip(TEXTS, expected, strict=True):
        (got,) = conn.execute(
            "SELECT azure_local_ai.create_embeddings(%s, %s)", [TINY_URI, text]
        ).fetchone()
        assert len(got) == TINY_DIMS
        np.testing.assert_allclose(np.array(got, dtype=np.float32), vector, atol=1e-6)


def test_array_overload_returns_rows_in_input_order(conn: psycopg.Connection, sidecar) -> None:
    expected = sidecar_vectors(sidecar, TEXTS)
    rows = conn.execute(
        "SELECT embedding FROM azure_local_ai.create_embeddings(%s, %s::text[], batch_size => 3)",
        [TINY_URI, TEXTS],
    ).fetchall()
    got = np.array([row[0] for row in rows], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_ids_overload_labels_each_row(conn: psycopg.Connection, sidecar) -> None:
    expected = sidecar_vectors(sidecar, TEXTS)
    rows = conn.execute(
        "SELECT id, embedding FROM azure_local_ai.create_embeddings(%s, %s::text[], %s::int[])",
        [TINY_URI, TEXTS, [10, 20, 30, 40]],
    ).fetchall()
    assert [row[0] for row in rows] == [10, 20, 30, 40]
    np.testing.assert_allclose(
        np.array([r[1] for r in rows], dtype=np.float32), expected, atol=1e-6
    )


def test_ids_of_another_type_keep_their_type(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        "SELECT id, pg_typeof(id)::text FROM azure_local_ai.create_embeddings(%s,"
        " ARRAY['a cat', 'a dog'], ARRAY['x'::text, 'y'])",
        [TINY_URI],
    ).fetchall()
    assert rows == [("x", "text"), ("y", "text")]


def test_ids_and_inputs_of_different_lengths_are_refused(conn: psycopg.Connection) -> None:
    with pytest.raises(errors.InvalidParameterValue, match="same number of elements"):
        conn.execute(
            "SELECT * FROM azure_local_ai.create_embeddings(%s, ARRAY['a', 'b'], ARRAY[1])",
            [TINY_URI],
        )


def test_embed_query_and_passage_apply_the_model_prefixes(
    conn: psycopg.Connection, sidecar: SidecarProcess, prefixed_model: str
) -> None:
    text = "a cat in the house"
    plain = np.array(
        conn.execute(
            "SELECT azure_local_ai.create_embeddings(%s, %s)", [prefixed_model, text]
        ).fetchone()[0],
        dtype=np.float32,
    )
    for function, input_type in (("embed_query", "query"), ("embed_passage", "passage")):
        (got,) = conn.execute(
            f"SELECT azure_local_ai.{function}(%s, %s)", [prefixed_model, text]
        ).fetchone()
        got = np.array(got, dtype=np.float32)
        expected = sidecar_vectors(sidecar, [text], prefixed_model, input_type)[0]
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert not np.allclose(got, plain, atol=1e-4)  # the prefix changed the input


def test_cloud_documentation_examples(conn: psycopg.Connection, sidecar) -> None:
    """Generated column, array and ids overloads, cosine similarity, HNSW index."""
    dims = TINY_DIMS  # the cloud examples use vector(384) with their 384-dimension model
    conn.execute("DROP TABLE IF EXISTS docs_items")
    conn.execute(
        f"""CREATE TABLE docs_items (
            id bigint PRIMARY KEY,
            description text,
            description_vector vector({dims}) GENERATED ALWAYS AS
                (azure_local_ai.create_embeddings('{TINY_URI}', description)::vector) STORED,
            other_vector vector({dims}))"""
    )
    texts = [
        f"{word} the cat in the {place}"
        for word in ("red", "green", "blue", "small")
        for place in ("house", "city", "river", "tree")
    ]
    conn.execute(
        "INSERT INTO docs_items (id, description)"
        " SELECT i, t FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, i)",
        [texts],
    )
    stored = conn.execute(
        "SELECT description_vector::real[] FROM docs_items ORDER BY id"
    ).fetchall()
    np.testing.assert_allclose(
        np.array([r[0] for r in stored], dtype=np.float32),
        sidecar_vectors(sidecar, texts),
        atol=1e-6,
    )

    # the ids overload in an UPDATE ... FROM CTE, as in the cloud documentation
    conn.execute(
        f"""WITH embeddings AS (
                SELECT id, embedding
                FROM azure_local_ai.create_embeddings(
                    '{TINY_URI}',
                    array(SELECT description FROM docs_items ORDER BY id),
                    array(SELECT id FROM docs_items ORDER BY id)))
            UPDATE docs_items d SET other_vector = e.embedding::vector
            FROM embeddings e WHERE d.id = e.id"""
    )
    assert conn.execute(
        "SELECT count(*) FROM docs_items WHERE other_vector = description_vector"
    ).fetchone() == (len(texts),)

    # the array overload feeding vectors
    (count,) = conn.execute(
        f"SELECT count(*) FROM azure_local_ai.create_embeddings('{TINY_URI}',"
        " array(SELECT description FROM docs_items)) e WHERE e.embedding::vector IS NOT NULL"
    ).fetchone()
    assert count == len(texts)

    # cosine similarity: the query text itself is its own nearest neighbour
    query = texts[5]
    nearest = conn.execute(
        f"""SELECT id, 1 - (description_vector <=>
                azure_local_ai.create_embeddings('{TINY_URI}', %s)::vector) AS similarity
            FROM docs_items ORDER BY similarity DESC LIMIT 3""",
        [query],
    ).fetchall()
    assert nearest[0][0] == 6
    assert nearest[0][1] == pytest.approx(1.0, abs=1e-5)

    # an HNSW index serves ORDER BY ... LIMIT
    conn.execute(
        "CREATE INDEX docs_items_hnsw ON docs_items"
        " USING hnsw (description_vector vector_cosine_ops)"
    )
    conn.execute("SET enable_seqscan = off")
    try:
        sql_text = (
            f"SELECT id FROM docs_items ORDER BY description_vector <=>"
            f" azure_local_ai.create_embeddings('{TINY_URI}', %s)::vector LIMIT 3"
        )
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql_text, [query]).fetchall())
        assert "docs_items_hnsw" in plan
        assert conn.execute(sql_text, [query]).fetchone() == (6,)
    finally:
        conn.execute("RESET enable_seqscan")
        conn.execute("DROP TABLE docs_items")


def test_null_arguments_give_null_and_null_elements_null_embeddings(
    conn: psycopg.Connection,
) -> None:
    assert conn.execute("SELECT azure_local_ai.create_embeddings(NULL, 'x')").fetchone() == (None,)
    assert conn.execute(
        "SELECT azure_local_ai.create_embeddings(%s, NULL)", [TINY_URI]
    ).fetchone() == (None,)
    assert conn.execute("SELECT azure_local_ai.embed_query(%s, NULL)", [TINY_URI]).fetchone() == (
        None,
    )
    rows = conn.execute(
        "SELECT id, embedding IS NULL FROM azure_local_ai.create_embeddings(%s,"
        " ARRAY[NULL, 'a cat', NULL, 'a dog'], ARRAY[1, 2, 3, 4], batch_size => 1)",
        [TINY_URI],
    ).fetchall()
    assert rows == [(1, True), (2, False), (3, True), (4, False)]
    assert conn.execute(
        "SELECT count(*) FROM azure_local_ai.create_embeddings(%s, NULL::text[])", [TINY_URI]
    ).fetchone() == (0,)
    assert conn.execute(
        "SELECT count(*) FROM azure_local_ai.create_embeddings(%s, ARRAY[NULL, NULL]::text[])",
        [TINY_URI],
    ).fetchone() == (2,)


def test_empty_string_is_refused_as_invalid_input(conn: psycopg.Connection) -> None:
    with pytest.raises(errors.InvalidParameterValue) as info:
        conn.execute("SELECT azure_local_ai.create_embeddings(%s, '')", [TINY_URI])
    assert "empty string" in info.value.diag.message_primary


def test_megabyte_text_is_truncated_and_embedded(conn: psycopg.Connection, sidecar) -> None:
    text = "the cat sat on the house " * 42000  # a little over 1 MB
    assert len(text) > 1_000_000
    (got,) = conn.execute(
        "SELECT azure_local_ai.create_embeddings(%s, %s)", [TINY_URI, text]
    ).fetchone()
    # the model sees only its first tokens: the same as a text cut well past that point
    np.testing.assert_allclose(
        np.array(got, dtype=np.float32), sidecar_vectors(sidecar, [text[:2000]])[0], atol=1e-6
    )


def test_ten_thousand_element_array(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        "SELECT embedding FROM azure_local_ai.create_embeddings(%s,"
        " array(SELECT 'text number ' || i FROM generate_series(1, 10000) i))",
        [TINY_URI],
    ).fetchall()
    assert len(rows) == 10000
    for index in (0, 4999, 9999):
        (single,) = conn.execute(
            "SELECT azure_local_ai.create_embeddings(%s, %s)",
            [TINY_URI, f"text number {index + 1}"],
        ).fetchone()
        np.testing.assert_allclose(rows[index][0], single, atol=1e-6)


def test_batch_size_bounds_each_request_and_keeps_order(conn: psycopg.Connection) -> None:
    texts = ["a", None, "bb", "ccc", None, "dddd", "eeeee", "ffffff", "g"]
    with fake_service("record") as fake, service_url(conn, fake.url):
        rows = conn.execute(
            "SELECT embedding FROM azure_local_ai.create_embeddings('any:v1', %s::text[],"
            " batch_size => 3)",
            [texts],
        ).fetchall()
    # the recording service answers [length of the text, position within its request]
    assert [row[0] and row[0][0] for row in rows] == [
        None if t is None else float(len(t)) for t in texts
    ]
    assert fake.requests == [["a", "bb", "ccc"], ["dddd", "eeeee", "ffffff"], ["g"]]


def test_connection_is_reused_between_calls(conn: psycopg.Connection) -> None:
    with fake_service("record") as fake, service_url(conn, fake.url):
        for text in ("a", "bb", "ccc"):
            conn.execute("SELECT azure_local_ai.create_embeddings('any:v1', %s)", [text])
        conn.execute("SELECT * FROM azure_local_ai.create_embeddings('any:v1', ARRAY['d', 'e'])")
    assert len(fake.requests) == 4
    assert fake.connections == 1


def test_service_url_may_name_a_unix_socket(conn: psycopg.Connection) -> None:
    directory = Path(tempfile.mkdtemp(prefix="alai-"))  # short: socket paths are limited
    directory.chmod(0o755)
    try:
        with (
            fake_service("record", str(directory / "sidecar.sock")) as fake,
            service_url(conn, fake.url),
        ):
            (got,) = conn.execute(
                "SELECT azure_local_ai.create_embeddings('any:v1', 'four')"
            ).fetchone()
        assert got == [4.0, 0.0]
        assert fake.requests == [["four"]]
    finally:
        shutil.rmtree(directory)


def test_a_real_sidecar_serves_sql_on_its_unix_socket_and_http_on_tcp_at_once(
    conn: psycopg.Connection, tiny_model_dir: Path
) -> None:
    """As ``make run`` wires them: the sidecar listens on TCP and on a Unix socket, and the
    module reaches it over the socket with the same vectors as over TCP."""
    directory = Path(tempfile.mkdtemp(prefix="alai-"))  # short: socket paths are limited
    directory.chmod(0o755)
    socket_path = directory / "inference.sock"
    sidecar = start_sidecar(directory / "var", unix_socket=socket_path)
    try:
        store = make_store_dir(tiny_model_dir, directory / "store" / "v1", uri="tiny-both:v1")
        sidecar.client.register("tiny-both:v1", str(store))
        # Anyone on the machine may connect, as to 127.0.0.1: the server's account is another.
        assert socket_path.stat().st_mode & 0o777 == 0o666
        statement = "SELECT azure_local_ai.create_embeddings('tiny-both:v1', %s)::text"
        texts = ["the cat", "a red car on the river"]
        with service_url(conn, sidecar.url):
            over_tcp = [conn.execute(statement, [t]).fetchone()[0] for t in texts]
        with service_url(conn, f"unix:{socket_path}"):
            over_socket = [conn.execute(statement, [t]).fetchone()[0] for t in texts]
        assert over_socket == over_tcp
        assert len(over_tcp[0].split(",")) == TINY_DIMS
        sidecar.stop()  # SIGTERM, as a service manager stops it
        assert not socket_path.exists()  # the sidecar removes its socket when it stops
    finally:
        sidecar.stop()
        shutil.rmtree(directory)


def test_unknown_model_is_an_undefined_object(conn: psycopg.Connection) -> None:
    with pytest.raises(errors.UndefinedObject) as info:
        conn.execute("SELECT azure_local_ai.create_embeddings('no-such-model:v1', 'hello')")
    assert "no-such-model:v1" in info.value.diag.message_primary
    with pytest.raises(errors.UndefinedObject):
        conn.execute("SELECT * FROM azure_local_ai.create_embeddings('no-such:v1', ARRAY['a'])")
    with pytest.raises(errors.UndefinedObject):
        conn.execute("SELECT azure_local_ai.model_loaded('no-such:v1')")


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT azure_local_ai.create_embeddings('tiny:v1', 'x', timeout_ms => 0)",
        "SELECT azure_local_ai.create_embeddings('tiny:v1', 'x', timeout_ms => -5)",
        "SELECT * FROM azure_local_ai.create_embeddings('tiny:v1', ARRAY['x'], batch_size => 0)",
        "SELECT * FROM azure_local_ai.create_embeddings('tiny:v1', ARRAY['x'], batch_size => -1)",
        "SELECT * FROM azure_local_ai.create_embeddings('tiny:v1', ARRAY['x'], ARRAY[1],"
        " batch_size => 0)",
        "SELECT * FROM azure_local_ai.create_embeddings('tiny:v1', ARRAY['x'], timeout_ms => 0)",
        "SELECT azure_local_ai.get_setting(timeout_ms => 0)",
    ],
)
def test_non_positive_batch_size_and_timeout_are_refused(
    conn: psycopg.Connection, statement: str
) -> None:
    with pytest.raises(errors.InvalidParameterValue, match="must be a positive number"):
        conn.execute(statement)


@pytest.fixture
def latin1_conn(managed_pg: ManagedServer, ext_db: str) -> Iterator[psycopg.Connection]:
    """A session in a LATIN1 database with the extension created."""
    name = "ext_tests_latin1"
    with managed_pg.connect() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        admin.execute(
            sql.SQL(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING 'LATIN1'"
                " LC_COLLATE 'C' LC_CTYPE 'C'"
            ).format(sql.Identifier(name))
        )
        try:
            with managed_pg.connect(name) as connection:
                connection.execute("CREATE EXTENSION azure_local_ai")
                yield connection
        finally:
            admin.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))


def test_a_latin1_database_speaks_utf8_to_the_sidecar(
    latin1_conn: psycopg.Connection, sidecar: SidecarProcess
) -> None:
    text = "un café crème"
    (got,) = latin1_conn.execute(
        "SELECT azure_local_ai.create_embeddings(%s, %s)", [TINY_URI, text]
    ).fetchone()
    np.testing.assert_allclose(
        np.array(got, dtype=np.float32), sidecar_vectors(sidecar, [text])[0], atol=1e-6
    )
    # the model URI travels in the URL, the sidecar's message back in JSON
    with pytest.raises(errors.UndefinedObject) as info:
        latin1_conn.execute("SELECT azure_local_ai.model_metadata('café:v1')")
    assert "café:v1" in info.value.diag.message_primary
    with pytest.raises(errors.InvalidParameterValue) as info:
        latin1_conn.execute("SELECT azure_local_ai.set_setting('max_wait_ms', 'deux à trois')")
    assert "deux à trois" in info.value.diag.message_primary
