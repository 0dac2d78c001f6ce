"""Malformed arguments to the SQL functions: a clear ERROR with a fitting SQLSTATE or a correct
result, never a crashed backend or a hang; the same session answers afterwards."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.extension.conftest import TINY_DIMS, TINY_URI
from tests.fixtures.sidecar import SidecarProcess

INT4 = (-(2**31), 2**31 - 1)
INT8 = (-(2**63), 2**63 - 1)
LONG_URI = "x" * 600


def assert_alive(conn: psycopg.Connection, pid: int) -> None:
    """The backend did not crash: the same process answers."""
    assert conn.execute("SELECT pg_backend_pid(), 1").fetchone() == (pid, 1)


@pytest.mark.parametrize(
    ("query", "sqlstate"),
    [
        # model_uri: empty, longer than a URI can be, or dot segments that must stay one
        ("SELECT azure_local_ai.create_embeddings('', 'a')", "22023"),
        (f"SELECT azure_local_ai.create_embeddings('{LONG_URI}', 'a')", "22023"),
        ("SELECT azure_local_ai.embed_query('', 'a')", "22023"),
        ("SELECT * FROM azure_local_ai.create_embeddings('', ARRAY['a'])", "22023"),
        ("SELECT azure_local_ai.model_metadata('')", "22023"),
        ("SELECT azure_local_ai.model_loaded('')", "22023"),
        ("SELECT azure_local_ai.model_unload('')", "22023"),
        ("SELECT azure_local_ai.model_unregister('')", "22023"),
        ("SELECT azure_local_ai.model_register('', '/nonexistent')", "22023"),
        (f"SELECT azure_local_ai.model_register('{LONG_URI}', '/nonexistent')", "22023"),
        ("SELECT azure_local_ai.model_metadata('..')", "42704"),
        ("SELECT azure_local_ai.model_loaded('.')", "42704"),
        ("SELECT azure_local_ai.model_unload('..')", "42704"),
        ("SELECT azure_local_ai.model_unregister('..')", "42704"),
        # batch_size and timeout_ms
        ("SELECT * FROM azure_local_ai.create_embeddings('tiny:v1', ARRAY['a'], 0)", "22023"),
        (
            f"SELECT * FROM azure_local_ai.create_embeddings('tiny:v1', ARRAY['a'], {INT8[0]})",
            "22023",
        ),
        ("SELECT * FROM azure_local_ai.create_embeddings('tiny:v1', ARRAY['a'], 1, 0)", "22023"),
        (f"SELECT azure_local_ai.create_embeddings('tiny:v1', 'a', {INT4[0]})", "22023"),
        ("SELECT azure_local_ai.model_loaded('tiny:v1', -1)", "22023"),
        ("SELECT azure_local_ai.get_setting('spin_control', 0)", "22023"),
        ("SELECT azure_local_ai.set_setting('max_wait_ms', '2', -5)", "22023"),
        ("SELECT azure_local_ai.set_setting('max_wait_ms', '2', NULL)", "22004"),
        # ids as long as inputs
        (
            "SELECT * FROM azure_local_ai.create_embeddings('tiny:v1', ARRAY['a', 'b'], ARRAY[1])",
            "22023",
        ),
        (
            "SELECT * FROM azure_local_ai.create_embeddings('tiny:v1', ARRAY['a'], ARRAY[]::int[])",
            "22023",
        ),
        # settings
        ("SELECT azure_local_ai.get_setting(ARRAY[NULL]::text[])", "22004"),
        ("SELECT azure_local_ai.get_setting('no_such_setting')", "22023"),
        ("SELECT azure_local_ai.set_setting(ARRAY['max_wait_ms'], ARRAY['1', '2'])", "22023"),
        ("SELECT azure_local_ai.set_setting(NULL::text[], ARRAY['1'])", "22004"),
        ("SELECT azure_local_ai.set_setting(ARRAY[NULL], ARRAY['1'])", "22004"),
        ("SELECT azure_local_ai.set_setting(NULL::text, '1')", "22004"),
        # an empty text has nothing to embed
        ("SELECT azure_local_ai.create_embeddings('tiny:v1', '')", "22023"),
    ],
)
def test_malformed_arguments_give_a_clear_error(
    conn: psycopg.Connection, query: str, sqlstate: str
) -> None:
    (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()
    with pytest.raises(psycopg.Error) as info:
        conn.execute(query)
    assert info.value.sqlstate == sqlstate, info.value.diag.message_primary
    assert_alive(conn, pid)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # STRICT: a NULL argument gives NULL, or no rows
        ("SELECT azure_local_ai.create_embeddings(NULL, 'a') IS NULL", [(True,)]),
        ("SELECT count(*) FROM azure_local_ai.create_embeddings('tiny:v1', NULL::text[])", [(0,)]),
        (
            "SELECT count(*)"
            " FROM azure_local_ai.create_embeddings('tiny:v1', ARRAY['a'], NULL::bigint)",
            [(0,)],
        ),
        (
            "SELECT count(*) FROM azure_local_ai.create_embeddings('tiny:v1', ARRAY['a'], 1, NULL)",
            [(0,)],
        ),
        (
            "SELECT count(*) FROM azure_local_ai.create_embeddings('tiny:v1', ARRAY[]::text[])",
            [(0,)],
        ),
        # the largest batch_size and timeout_ms
        (
            "SELECT count(*) FROM azure_local_ai.create_embeddings("
            f"'tiny:v1', ARRAY['a', 'b'], {INT8[1]}, {INT4[1]})",
            [(2,)],
        ),
        # a two-dimensional array counts its elements in order
        (
            "SELECT id FROM azure_local_ai.create_embeddings("
            "'tiny:v1', '{{a,b},{c,d}}'::text[], '{{1,2},{3,4}}'::int[])",
            [(1,), (2,), (3,), (4,)],
        ),
        # only NULL inputs: nothing to ask, even of a model that does not exist
        (
            "SELECT id, embedding FROM azure_local_ai.create_embeddings("
            "'no-such:v1', ARRAY[NULL, NULL]::text[], ARRAY['x', NULL])",
            [("x", None), (None, None)],
        ),
    ],
)
def test_edge_arguments_give_the_documented_result(
    conn: psycopg.Connection, query: str, expected: list[tuple[object, ...]]
) -> None:
    assert conn.execute(query).fetchall() == expected


def test_ten_thousand_inputs_with_ids_come_back_in_order(
    conn: psycopg.Connection, sidecar: SidecarProcess
) -> None:
    texts: list[str | None] = [
        None if i % 1000 == 7 else f"text number {i % 50}" for i in range(10_000)
    ]
    ids = list(range(10_000, 0, -1))
    rows = conn.execute(
        "SELECT id, embedding FROM azure_local_ai.create_embeddings(%s, %s::text[], %s::int[],"
        " batch_size => 999)",
        [TINY_URI, texts, ids],
    ).fetchall()
    assert [row[0] for row in rows] == ids
    assert [row[1] is None for row in rows] == [text is None for text in texts]
    reference, _ = sidecar.client.embed(TINY_URI, [f"text number {i}" for i in range(50)])
    for text, (_, embedding) in zip(texts, rows, strict=True):
        if text is not None:
            expected = reference[int(text.rsplit(" ", 1)[1])]
            np.testing.assert_allclose(np.array(embedding, dtype=np.float32), expected, atol=1e-6)


# -- properties ---------------------------------------------------------------------------------

# Text PostgreSQL can hold (no NUL) and UTF-8 can encode (no lone surrogates).
TEXT_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
MODEL_URIS = st.one_of(
    st.sampled_from([TINY_URI, "", ".", "..", LONG_URI, "no-such-model:v1", "a/b:c?d#e"]),
    st.text(TEXT_CHARS, max_size=20),
)
TIMEOUTS = st.one_of(st.integers(*INT4), st.integers(-2, 3), st.just(60_000))
BATCH_SIZES = st.one_of(st.integers(*INT8), st.integers(-2, 12))
# Errors the sidecar may give for a call the module passes on: an unknown model or one it
# refuses to look up (42704, 22023), an empty text (22023), a timeout of a few ms (57014).
REQUEST_ERRORS = {"42704", "22023", "57014"}


def nullable(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), strategy)


@st.composite
def array_calls(draw: st.DrawFn) -> dict[str, object]:
    inputs = draw(nullable(st.lists(nullable(st.text(TEXT_CHARS, max_size=12)), max_size=30)))
    call: dict[str, object] = {
        "model_uri": draw(nullable(MODEL_URIS)),
        "inputs": inputs,
        "batch_size": draw(nullable(BATCH_SIZES)),
        "timeout_ms": draw(nullable(TIMEOUTS)),
    }
    if draw(st.booleans()):
        size = len(inputs) if inputs is not None else 0
        # mostly as long as inputs, sometimes not
        length = draw(st.one_of(st.just(size), st.integers(0, 32)))
        ids = st.lists(nullable(st.integers(*INT4)), min_size=length, max_size=length)
        call["ids"] = draw(nullable(ids))
    return call


def argument_error(model_uri: str, batch_size: int | None, timeout_ms: int) -> bool:
    """Whether the module itself refuses these arguments (22023) before any request."""
    return (
        model_uri == ""
        or len(model_uri.encode()) > 511
        or (batch_size is not None and batch_size <= 0)
        or timeout_ms <= 0
    )


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(call=array_calls())
def test_array_overloads_answer_any_arguments_correctly_or_with_a_clear_error(
    conn: psycopg.Connection, sidecar: SidecarProcess, call: dict[str, object]
) -> None:
    (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()
    with_ids = "ids" in call
    query = (
        "SELECT {columns} FROM azure_local_ai.create_embeddings("
        "%(model_uri)s, %(inputs)s::text[], {ids}%(batch_size)s::bigint, %(timeout_ms)s::int)"
    ).format(
        columns="id, embedding" if with_ids else "NULL, embedding",
        ids="%(ids)s::int[], " if with_ids else "",
    )
    try:
        rows = conn.execute(query, call).fetchall()
        error = None
    except psycopg.Error as exc:
        rows, error = [], exc
    assert_alive(conn, pid)

    inputs = call["inputs"]
    if any(value is None for value in call.values()):  # STRICT
        assert error is None and rows == []
        return
    assert isinstance(inputs, list)
    ids = call.get("ids")
    if argument_error(call["model_uri"], call["batch_size"], call["timeout_ms"]) or (
        with_ids and len(ids) != len(inputs)
    ):
        assert error is not None and error.sqlstate == "22023", error
        return
    texts = [text for text in inputs if text is not None]
    if error is not None:
        assert texts and error.sqlstate in REQUEST_ERRORS, error
        return
    assert len(rows) == len(inputs)
    if with_ids:
        assert [row[0] for row in rows] == ids
    assert [row[1] is None for row in rows] == [text is None for text in inputs]
    if texts:
        assert call["model_uri"] == TINY_URI and "" not in texts
        expected, _ = sidecar.client.embed(TINY_URI, texts)
        got = np.array([row[1] for row in rows if row[1] is not None], dtype=np.float32)
        assert got.shape == (len(texts), TINY_DIMS)
        np.testing.assert_allclose(got, expected, atol=1e-6)


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    function=st.sampled_from(["create_embeddings", "model_loaded", "get_setting"]),
    argument=MODEL_URIS,
    text=st.text(TEXT_CHARS, max_size=12),
    timeout_ms=TIMEOUTS,
)
# A '/' in a model URI, escaped into the request's path, once drew a redirect (08P01).
@example(function="model_loaded", argument="/", text="", timeout_ms=60000)
@example(function="model_loaded", argument="a/load", text="", timeout_ms=60000)
def test_single_value_functions_answer_any_arguments_correctly_or_with_a_clear_error(
    conn: psycopg.Connection, function: str, argument: str, text: str, timeout_ms: int
) -> None:
    (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()
    query = {
        "create_embeddings": "SELECT azure_local_ai.create_embeddings(%s, %s, %s)",
        "model_loaded": "SELECT azure_local_ai.model_loaded(%s, %s)",
        "get_setting": "SELECT azure_local_ai.get_setting(ARRAY[%s, 'spin_control'], %s)",
    }[function]
    params = [argument, timeout_ms]
    if function == "create_embeddings":
        params.insert(1, text)
    try:
        (result,) = conn.execute(query, params).fetchone()
        error = None
    except psycopg.Error as exc:
        result, error = None, exc
    assert_alive(conn, pid)

    if timeout_ms <= 0 or (function != "get_setting" and argument_error(argument, None, 1)):
        assert error is not None and error.sqlstate == "22023", error
    elif error is not None:
        assert error.sqlstate in REQUEST_ERRORS, error
        if function == "get_setting" and error.sqlstate == "22023":
            assert "unknown inference setting" in error.diag.message_primary
    elif function == "create_embeddings":
        assert argument == TINY_URI and text != "" and len(result) == TINY_DIMS
    elif function == "model_loaded":
        assert argument == TINY_URI and result is True
    else:
        assert "spin_control" in result
