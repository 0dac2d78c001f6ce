"""The sidecar's HTTP API, spoken to in raw HTTP against a real sidecar process."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest

from inference import protocol
from inference.client import InferenceError
from tests.fixtures.sidecar import TINY_URI, SidecarProcess, make_store_dir, metric_value
from tests.fixtures.tinymodel import HIDDEN, MAX_SEQ_LENGTH
from tests.inference.conftest import MATRYOSHKA_DIMENSIONS

TEXTS = ["the cat is on the house", "a red car", "vector search in postgres", "hello world"]


@pytest.fixture(scope="module")
def prefixed_uri(
    sidecar: SidecarProcess, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A store-layout copy of the tiny model whose manifest gives query/passage prefixes."""
    uri = "tiny-prefixed:v1"
    store_dir = make_store_dir(tiny_model_dir, tmp_path_factory.mktemp("store") / "v1", uri=uri)
    sidecar.client.register(uri, str(store_dir))
    yield uri
    sidecar.client.unregister(uri)


def embed(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post("/v1/embeddings", json={"model": TINY_URI, **body})


def vectors_of(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [item["index"] for item in data] == list(range(len(data)))
    return np.array([item["embedding"] for item in data], dtype=np.float32)


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert set(error) >= {"message", "type", "param", "code"}
    return error


# -- /v1/embeddings ---------------------------------------------------------------------------


def test_embeddings_answer_in_the_openai_shape(http: httpx.Client) -> None:
    response = embed(http, input=TEXTS, user="someone@example.org")
    body = response.json()
    assert body["object"] == "list"
    assert body["model"] == TINY_URI
    assert all(item["object"] == "embedding" for item in body["data"])
    vectors = vectors_of(response)
    assert vectors.shape == (len(TEXTS), HIDDEN)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    usage = body["usage"]
    # Every text has [CLS] and [SEP] plus at least one token.
    assert usage["prompt_tokens"] == usage["total_tokens"] >= 3 * len(TEXTS)


def test_each_item_says_its_token_count_and_whether_it_was_truncated(
    http: httpx.Client,
) -> None:
    long_text = "cat " * (MAX_SEQ_LENGTH * 2)
    texts = ["a red car", long_text, "hello world"]
    for encoding in ("float", "base64"):
        response = embed(http, input=texts, encoding_format=encoding)
        assert response.status_code == 200, response.text
        body = response.json()
        items = body["data"]
        assert [item["prompt_tokens"] for item in items] == [5, MAX_SEQ_LENGTH, 4]
        assert [item["truncated"] for item in items] == [False, True, False]
        assert body["usage"]["prompt_tokens"] == sum(item["prompt_tokens"] for item in items)
    # Without truncation nothing is cut (an over-long input is refused instead).
    items = embed(http, input=texts[::2], truncate=False).json()["data"]
    assert [item["truncated"] for item in items] == [False, False]


def test_every_response_says_how_long_the_sidecar_took(http: httpx.Client) -> None:
    for response in (embed(http, input=TEXTS), http.get("/health"), http.get("/models/nope:v1")):
        assert float(response.headers["x-process-time-ms"]) >= 0, response.headers


def test_single_string_input_gives_one_row_equal_to_the_list_form(http: httpx.Client) -> None:
    single = vectors_of(embed(http, input=TEXTS[0]))
    listed = vectors_of(embed(http, input=TEXTS))
    assert single.shape == (1, HIDDEN)
    np.testing.assert_allclose(single[0], listed[0], atol=1e-6)


def test_different_texts_give_different_vectors(http: httpx.Client) -> None:
    vectors = vectors_of(embed(http, input=["cat", "database"]))
    assert float(vectors[0] @ vectors[1]) < 0.999


def test_base64_encoding_is_float32_little_endian_of_the_same_vector(http: httpx.Client) -> None:
    floats = vectors_of(embed(http, input=TEXTS))
    response = embed(http, input=TEXTS, encoding_format="base64")
    assert response.status_code == 200, response.text
    decoded = np.array(
        [
            np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
            for d in response.json()["data"]
        ]
    )
    np.testing.assert_array_equal(decoded, floats)


def test_float_encoding_writes_each_float32_in_the_fewest_digits_that_read_back_exactly(
    http: httpx.Client,
) -> None:
    response = embed(http, input=TEXTS)
    vectors = vectors_of(response)
    # The numbers as the body writes them, not as a JSON reader rounds them to float64.
    arrays = re.findall(r'"embedding":\[([^\]]*)\]', response.text)
    written = [number.split(",") for number in arrays]
    assert len(written) == len(TEXTS)
    for row, numbers in zip(vectors, written, strict=True):
        assert np.array_equal(np.array(numbers, dtype=np.float64).astype(np.float32), row)
        # float32 needs at most 9 significant digits; float64 digits would take up to 17.
        digits = [len(n.split("e")[0].lstrip("-").replace(".", "").strip("0")) for n in numbers]
        assert max(digits) <= 9, numbers


def test_dimensions_keeps_the_first_n_and_renormalises(
    http: httpx.Client, matryoshka_uri: str
) -> None:
    full = vectors_of(embed(http, model=matryoshka_uri, input=TEXTS))
    short = vectors_of(embed(http, model=matryoshka_uri, input=TEXTS, dimensions=8))
    assert short.shape == (len(TEXTS), 8)
    expected = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(short, expected, atol=1e-6)
    same = vectors_of(embed(http, model=matryoshka_uri, input=TEXTS, dimensions=HIDDEN))
    np.testing.assert_allclose(same, full, atol=1e-7)


@pytest.mark.parametrize("dimensions", [0, -1, 12, HIDDEN + 1])
def test_dimensions_the_model_was_not_trained_for_are_refused_naming_those_it_was(
    http: httpx.Client, matryoshka_uri: str, dimensions: int
) -> None:
    response = embed(http, model=matryoshka_uri, input="cat", dimensions=dimensions)
    error = error_of(response, 400, "invalid_input")
    assert (error["param"], error["type"]) == ("dimensions", "invalid_request_error")
    assert f"model {matryoshka_uri} gives {HIDDEN} dimensions" in error["message"]
    assert f"one of 8, 16, {HIDDEN}, got {dimensions}" in error["message"]


def test_dimensions_are_refused_for_a_model_that_declares_none(
    http: httpx.Client, prefixed_uri: str
) -> None:
    # A Hugging Face directory, and a store manifest without matryoshka_dimensions.
    for uri in (TINY_URI, prefixed_uri):
        error = error_of(embed(http, model=uri, input="cat", dimensions=8), 400, "invalid_input")
        assert (error["param"], error["type"]) == ("dimensions", "invalid_request_error")
        assert f"model {uri} gives {HIDDEN} dimensions" in error["message"]
        assert "not trained to be cut shorter" in error["message"]
        # Its full dimension is always fine.
        full = embed(http, model=uri, input="cat", dimensions=HIDDEN)
        assert vectors_of(full).shape == (1, HIDDEN)


def test_input_type_applies_the_model_prefix(http: httpx.Client, prefixed_uri: str) -> None:
    text = "the river in the city"
    plain, query, passage = (
        vectors_of(http.post("/v1/embeddings", json={"model": prefixed_uri, "input": [text], **x}))
        for x in ({}, {"input_type": "query"}, {"input_type": "passage"})
    )
    assert not np.allclose(plain, query, atol=1e-3)
    assert not np.allclose(query, passage, atol=1e-3)
    spelled_out = vectors_of(
        http.post("/v1/embeddings", json={"model": prefixed_uri, "input": ["query: " + text]})
    )
    np.testing.assert_allclose(query, spelled_out, atol=1e-6)


def test_truncate_false_refuses_an_over_long_input_naming_it(http: httpx.Client) -> None:
    long_text = "cat " * (MAX_SEQ_LENGTH * 2)
    response = embed(http, input=["a dog", long_text], truncate=False)
    error = error_of(response, 413, "input_too_long")
    assert "input[1]" in error["message"]
    assert f"{MAX_SEQ_LENGTH * 2 + 2} tokens" in error["message"]
    assert str(MAX_SEQ_LENGTH) in error["message"]
    # By default the input is cut to the model's limit instead.
    truncated = embed(http, input=["a dog", long_text])
    assert vectors_of(truncated).shape == (2, HIDDEN)


def test_empty_input_list_is_refused(http: httpx.Client) -> None:
    error = error_of(embed(http, input=[]), 400, "invalid_input")
    assert "empty list" in error["message"]


def test_empty_string_is_refused_naming_its_index(http: httpx.Client) -> None:
    error = error_of(embed(http, input=["cat", ""]), 400, "invalid_input")
    assert "input[1] is an empty string" in error["message"]


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"input": 5}, "input", "a string or a list of strings"),
        ({"input": ["cat", 7]}, "input", "input[1] is a number"),
        ({"input": [[101, 102]]}, "input", "input[0] is an array"),
        ({"input": "cat", "encoding_format": "hex"}, "encoding_format", "'float' or 'base64'"),
        ({"input": "cat", "input_type": "document"}, "input_type", "'query' or 'passage'"),
        ({"input": "cat", "truncate": "no"}, "truncate", "true or false"),
        ({"input": "cat", "dimensions": "8"}, "dimensions", "must be an integer"),
        ({"input": "cat", "dimensions": True}, "dimensions", "must be an integer"),
        ({"input": "cat", "user": 12}, "user", "must be a string"),
        ({"model": None, "input": "cat"}, "model", "model is required"),
    ],
)
def test_wrong_types_are_422_naming_the_field(
    http: httpx.Client, body: dict[str, Any], param: str, fragment: str
) -> None:
    error = error_of(
        http.post("/v1/embeddings", json={"model": TINY_URI, **body}), 422, "invalid_input"
    )
    assert error["param"] == param
    assert fragment in error["message"]


def test_malformed_json_is_400(http: httpx.Client) -> None:
    response = http.post(
        "/v1/embeddings",
        content=b'{"model": "tiny:v1", "input": ',
        headers={"content-type": "application/json"},
    )
    error = error_of(response, 400, "invalid_input")
    assert "not valid JSON" in error["message"]
    error = error_of(http.post("/v1/embeddings", json=["cat"]), 422, "invalid_input")
    assert "JSON object" in error["message"]


def test_unknown_model_is_404_listing_the_registered_ones(http: httpx.Client) -> None:
    response = http.post("/v1/embeddings", json={"model": "nope:v9", "input": "cat"})
    error = error_of(response, 404, "model_not_found")
    assert "nope:v9" in error["message"]
    assert TINY_URI in error["message"]
    assert "deploy it from the console" in error["message"]
    # Embedding with a model and asking for it say the same thing.
    described = error_of(http.get("/models/nope:v9"), 404, "model_not_found")
    assert described["message"] == error["message"]


def test_registered_but_not_loaded_model_is_409_saying_how_to_load(
    http: httpx.Client, sidecar: SidecarProcess, tiny_model_dir: Path
) -> None:
    uri = "tiny-idle:v1"
    registered = sidecar.client.register(uri, str(tiny_model_dir), load=False)
    try:
        assert registered["loaded"] is False
        response = http.post("/v1/embeddings", json={"model": uri, "input": "cat"})
        error = error_of(response, 409, "model_not_loaded")
        assert f"POST /models/{uri}/load" in error["message"]

        assert http.post(f"/models/{uri}/load").json()["loaded"] is True
        loaded = vectors_of(http.post("/v1/embeddings", json={"model": uri, "input": "cat"}))
        np.testing.assert_allclose(loaded, vectors_of(embed(http, input="cat")), atol=1e-6)

        assert http.post(f"/models/{uri}/unload").json()["loaded"] is False
        response = http.post("/v1/embeddings", json={"model": uri, "input": "cat"})
        error_of(response, 409, "model_not_loaded")
    finally:
        sidecar.client.unregister(uri)


def test_a_stored_model_whose_file_was_changed_is_refused_at_load_saying_which(
    http: httpx.Client, sidecar: SidecarProcess, tiny_model_dir: Path, tmp_path: Path
) -> None:
    uri = "tiny-tampered:v1"
    store_dir = make_store_dir(tiny_model_dir, tmp_path / "v1", uri=uri)
    sidecar.client.register(uri, str(store_dir))
    try:
        vectors_of(http.post("/v1/embeddings", json={"model": uri, "input": "cat"}))
        assert http.post(f"/models/{uri}/unload").json()["loaded"] is False
        onnx = next(store_dir.rglob("*.onnx"))
        data = bytearray(onnx.read_bytes())
        data[-1] ^= 0xFF  # one flipped bit in the weights: still a loadable model
        onnx.write_bytes(bytes(data))
        response = http.post(f"/models/{uri}/load")
        assert response.status_code == 422, response.text
        message = response.json()["error"]["message"]
        assert f"refusing to load model {uri}" in message
        assert f"{onnx.relative_to(store_dir).as_posix()} does not match its sha256" in message
        assert "deploy it again" in message
        error_of(http.post("/v1/embeddings", json={"model": uri, "input": "cat"}), 409,
                 "model_not_loaded")  # fmt: skip
        (tmp_path / "v1" / "stray.txt").write_text("not deployed")
        onnx.write_bytes(bytes(data[:-1]) + bytes([data[-1] ^ 0xFF]))  # the file restored
        response = http.post(f"/models/{uri}/load")
        assert response.status_code == 422 and "stray.txt is not listed" in response.text
    finally:
        sidecar.client.unregister(uri)


def test_request_limits_follow_the_settings_live(http: httpx.Client) -> None:
    before = http.get("/settings").json()
    try:
        assert http.put("/settings", json={"max_inputs_per_request": 2}).status_code == 200
        error = error_of(embed(http, input=["a", "b", "c"]), 413, "too_many_inputs")
        assert "max_inputs_per_request (2)" in error["message"]
        assert "3 inputs" in error["message"]
        assert vectors_of(embed(http, input=["a", "b"])).shape == (2, HIDDEN)

        assert http.put("/settings", json={"max_request_bytes": 1024}).status_code == 200
        big = ["cat " * 300]
        error = error_of(embed(http, input=big), 413, "request_too_large")
        assert "max_request_bytes (1024)" in error["message"]

        # Without Content-Length (chunked), the size is checked on the bytes themselves.
        payload = json.dumps({"model": TINY_URI, "input": big}).encode()
        chunked = http.post("/v1/embeddings", content=iter([payload[:500], payload[500:]]))
        error_of(chunked, 413, "request_too_large")
        binary = http.post(
            protocol.PATH, params={"model": TINY_URI}, content=protocol.encode_request(big)
        )
        error_of(binary, 413, "request_too_large")
        encoded = protocol.encode_request(big)
        binary_chunked = http.post(
            protocol.PATH, params={"model": TINY_URI}, content=iter([encoded[:500], encoded[500:]])
        )
        error_of(binary_chunked, 413, "request_too_large")
    finally:
        restore = {k: before[k] for k in ("max_inputs_per_request", "max_request_bytes")}
        assert http.put("/settings", json=restore).status_code == 200


def test_concurrent_requests_share_runs_and_get_the_same_rows_as_single_calls(
    http: httpx.Client,
) -> None:
    # Varied lengths, so that rows sharing a run are padded to another width than alone.
    texts = [f"{TEXTS[i % len(TEXTS)]} number {i}" + " and more" * (i % 5) for i in range(24)]
    alone = np.concatenate([vectors_of(embed(http, input=[t])) for t in texts])

    def runs() -> float:
        return metric_value(http.get("/metrics").text, "inference_batch_size_count", model=TINY_URI)

    def one(index: int) -> np.ndarray:
        return vectors_of(embed(http, input=[texts[index]]))

    before = http.get("/settings").json()
    # A long window and small runs: a run starts as soon as four requests fill it.
    assert http.put("/settings", json={"max_wait_ms": 1000, "max_batch_size": 4}).status_code == 200
    try:
        start = runs()
        with ThreadPoolExecutor(max_workers=len(texts)) as pool:
            together = np.concatenate(list(pool.map(one, range(len(texts)))))
        shared_runs = runs() - start
    finally:
        http.put("/settings", json={k: before[k] for k in ("max_wait_ms", "max_batch_size")})
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert shared_runs < len(texts)


# -- binary route -----------------------------------------------------------------------------


def test_binary_route_equals_the_json_route(http: httpx.Client) -> None:
    texts = [*TEXTS, "naïve café, ünïcödé ✓"]
    response = http.post(
        protocol.PATH,
        params={"model": TINY_URI},
        content=protocol.encode_request(texts),
        headers={"content-type": protocol.CONTENT_TYPE},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == protocol.CONTENT_TYPE
    binary = protocol.decode_response(response.content)
    as_json = embed(http, input=texts)
    np.testing.assert_allclose(binary, vectors_of(as_json), atol=1e-6)
    assert int(response.headers["x-prompt-tokens"]) == as_json.json()["usage"]["prompt_tokens"]


def test_binary_route_applies_input_type_and_truncate(
    http: httpx.Client, prefixed_uri: str
) -> None:
    text = "the river in the city"
    body = protocol.encode_request([text])
    query = http.post(
        protocol.PATH, params={"model": prefixed_uri, "input_type": "query"}, content=body
    )
    expected = http.post(
        "/v1/embeddings", json={"model": prefixed_uri, "input": [text], "input_type": "query"}
    )
    np.testing.assert_allclose(
        protocol.decode_response(query.content), vectors_of(expected), atol=1e-6
    )
    # A repeated query parameter counts by its last value, as on every other route.
    repeated = http.post(
        protocol.PATH, params=[("model", "nope:v1"), ("model", prefixed_uri)], content=body
    )
    assert repeated.status_code == 200, repeated.text
    long = protocol.encode_request(["cat " * 100])
    refused = http.post(
        protocol.PATH, params={"model": TINY_URI, "truncate": "false"}, content=long
    )
    error_of(refused, 413, "input_too_long")


def test_binary_route_errors_are_json(http: httpx.Client) -> None:
    error = error_of(
        http.post(protocol.PATH, params={"model": TINY_URI}, content=b"\x05\x00"),
        400,
        "invalid_input",
    )
    assert "shorter than its 4-byte count" in error["message"]
    truncated = protocol.encode_request(["cat", "dog"])[:-1]
    error = error_of(
        http.post(protocol.PATH, params={"model": TINY_URI}, content=truncated),
        400,
        "invalid_input",
    )
    assert "truncated" in error["message"]
    body = protocol.encode_request(["cat"])
    error_of(
        http.post(protocol.PATH, params={"model": "nope:v1"}, content=body), 404, "model_not_found"
    )
    error = error_of(http.post(protocol.PATH, content=body), 422, "invalid_input")
    assert error["param"] == "model"
    error = error_of(
        http.post(
            protocol.PATH, params={"model": TINY_URI}, content=protocol.encode_request(["a", ""])
        ),
        400,
        "invalid_input",
    )
    assert "input[1]" in error["message"]


def test_timeout_header_gives_504_when_the_model_cannot_answer_in_time(http: httpx.Client) -> None:
    # Thousands of full-length texts cannot be embedded within one millisecond.
    body = protocol.encode_request([f"the cat {i} " * 12 for i in range(3000)])
    response = http.post(
        protocol.PATH, params={"model": TINY_URI}, content=body, headers={"X-Timeout-Ms": "1"}
    )
    error = error_of(response, 504, "timeout")
    assert "X-Timeout-Ms" in error["message"]
    # A generous timeout, and 0 (no limit), both answer.
    small = protocol.encode_request(["cat"])
    for value in ("600000", "0"):
        ok = http.post(
            protocol.PATH,
            params={"model": TINY_URI},
            content=small,
            headers={"X-Timeout-Ms": value},
        )
        assert ok.status_code == 200, ok.text
    bad = http.post(
        protocol.PATH, params={"model": TINY_URI}, content=small, headers={"X-Timeout-Ms": "soon"}
    )
    error_of(bad, 400, "invalid_input")


# -- models -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "route"),
    [
        ("GET", "/models/{}"),
        ("DELETE", "/models/{}"),
        ("POST", "/models/{}/load"),
        ("POST", "/models/{}/unload"),
        ("GET", "/v1/models/{}"),
    ],
)
def test_a_model_uri_with_a_slash_is_refused_as_that_uri_on_every_model_route(
    http: httpx.Client, method: str, route: str
) -> None:
    # Escaped as a client escapes it, the slash must not become a separator of the path: no
    # other route's 405, no redirect, no "no route".
    for uri in ("/", "a/load", "x/y:v1", f"{TINY_URI}/"):
        response = http.request(method, route.format(quote(uri, safe="")))
        error = error_of(response, 400, "invalid_input")
        assert error["param"] == "model_uri"
        assert f"model URI {uri!r} must look like name:version" in error["message"]


def test_a_path_matching_no_route_is_answered_404_not_redirected(http: httpx.Client) -> None:
    for path in ("/models/", "/v1/models/", "/settings/"):
        error = error_of(http.get(path), 404, "invalid_input")
        assert f"no route GET {path}" in error["message"]


def test_openai_model_list_names_the_registered_models(http: httpx.Client) -> None:
    body = http.get("/v1/models").json()
    assert body["object"] == "list"
    tiny = next(m for m in body["data"] if m["id"] == TINY_URI)
    assert tiny["object"] == "model"
    assert isinstance(tiny["created"], int) and tiny["created"] > 1_600_000_000
    assert http.get(f"/v1/models/{TINY_URI}").json()["id"] == TINY_URI
    error_of(http.get("/v1/models/nope:v1"), 404, "model_not_found")


def test_openai_model_items_carry_the_models_facts(
    http: httpx.Client, sidecar: SidecarProcess, tiny_model_dir: Path, matryoshka_uri: str
) -> None:
    idle = "tiny-idle-facts:v1"
    sidecar.client.register(idle, str(tiny_model_dir), load=False)
    try:
        items = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    finally:
        sidecar.client.unregister(idle)
    declared = items[matryoshka_uri]
    assert declared == {
        "id": matryoshka_uri,
        "object": "model",
        "created": declared["created"],
        "owned_by": "local",
        "kind": "embedding",
        "dimensions": HIDDEN,
        "max_tokens": MAX_SEQ_LENGTH,
        "pooling": "mean",
        "normalize": True,
        "prefixes": {"query": "query: ", "passage": "passage: "},
        "matryoshka_dimensions": MATRYOSHKA_DIMENSIONS,
        "license": {"name": "MIT", "url": "https://opensource.org/license/mit"},
        "precision": "fp32",
        "loaded": True,
    }
    # A Hugging Face directory without a license in its README, and a model not loaded.
    assert (items[TINY_URI]["license"], items[TINY_URI]["matryoshka_dimensions"]) == (None, [])
    assert (items[TINY_URI]["loaded"], items[idle]["loaded"]) == (True, False)
    assert items[idle]["dimensions"] == HIDDEN
    assert http.get(f"/v1/models/{matryoshka_uri}").json() == declared


def test_model_metadata_describes_the_registration(
    http: httpx.Client, tiny_model_dir: Path
) -> None:
    meta = http.get(f"/models/{TINY_URI}").json()
    assert meta["model_uri"] == TINY_URI
    assert (meta["name"], meta["version"]) == ("tiny", "v1")
    assert isinstance(meta["id"], int)
    assert (meta["dimensions"], meta["max_tokens"], meta["pooling"]) == (
        HIDDEN,
        MAX_SEQ_LENGTH,
        "mean",
    )
    assert meta["loaded"] is True
    assert meta["precision"] == "fp32"
    assert meta["model_path"] == str(tiny_model_dir.resolve())
    assert len(meta["files"]["onnx/model.onnx"]) == 64
    assert meta["prefixes"] == {"query": "", "passage": ""}
    assert meta["matryoshka_dimensions"] == []
    listed = http.get("/models").json()["models"]
    assert any(m["model_uri"] == TINY_URI and m["id"] == meta["id"] for m in listed)


def test_store_model_metadata_comes_from_its_manifest(
    http: httpx.Client, prefixed_uri: str
) -> None:
    meta = http.get(f"/models/{prefixed_uri}").json()
    assert meta["license"]["name"] == "MIT"
    assert meta["prefixes"] == {"query": "query: ", "passage": "passage: "}
    assert meta["source"]["kind"] == "local"
    assert "manifest.json" not in meta["files"] and "tokenizer.json" in meta["files"]


def test_declared_matryoshka_dimensions_are_part_of_the_model_metadata(
    http: httpx.Client, matryoshka_uri: str
) -> None:
    meta = http.get(f"/models/{matryoshka_uri}").json()
    assert meta["matryoshka_dimensions"] == MATRYOSHKA_DIMENSIONS


def test_registering_again_returns_the_same_id_and_other_paths_conflict(
    http: httpx.Client, tiny_model_dir: Path, tiny_cls_model_dir: Path
) -> None:
    first = http.get(f"/models/{TINY_URI}").json()
    again = http.post("/models", json={"model_uri": TINY_URI, "model_path": str(tiny_model_dir)})
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first["id"]
    other = http.post(
        "/models", json={"model_uri": TINY_URI, "model_path": str(tiny_cls_model_dir)}
    )
    error = error_of(other, 409, "invalid_input")
    assert str(tiny_model_dir.resolve()) in error["message"]


def test_register_validates_uri_and_path(
    http: httpx.Client, tmp_path: Path, tiny_model_dir: Path
) -> None:
    bad_uri = http.post("/models", json={"model_uri": "tiny", "model_path": str(tiny_model_dir)})
    assert "name:version" in error_of(bad_uri, 400, "invalid_input")["message"]
    missing = http.post(
        "/models", json={"model_uri": "gone:v1", "model_path": str(tmp_path / "gone")}
    )
    error = error_of(missing, 400, "invalid_input")
    assert error["param"] == "model_path" and "does not exist" in error["message"]
    no_path = http.post("/models", json={"model_uri": "gone:v1"})
    assert error_of(no_path, 422, "invalid_input")["param"] == "model_path"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "config.json",
        "special_tokens_map.json",
    ):
        (broken / name).write_bytes((tiny_model_dir / name).read_bytes())
    unloadable = http.post("/models", json={"model_uri": "broken:v1", "model_path": str(broken)})
    error = error_of(unloadable, 422, "invalid_input")
    assert "cannot load model broken:v1" in error["message"]
    # A model that cannot load is not left registered.
    error_of(http.get("/models/broken:v1"), 404, "model_not_found")


def test_unregister_unloads_and_forgets(
    http: httpx.Client, sidecar: SidecarProcess, tiny_model_dir: Path
) -> None:
    uri = "tiny-gone:v1"
    created = http.post("/models", json={"model_uri": uri, "model_path": str(tiny_model_dir)})
    assert created.status_code == 201, created.text
    assert vectors_of(http.post("/v1/embeddings", json={"model": uri, "input": "cat"})).shape == (
        1,
        HIDDEN,
    )
    deleted = http.delete(f"/models/{uri}")
    assert deleted.json() == {"model_uri": uri, "id": created.json()["id"], "deleted": True}
    error_of(
        http.post("/v1/embeddings", json={"model": uri, "input": "cat"}), 404, "model_not_found"
    )
    error_of(http.delete(f"/models/{uri}"), 404, "model_not_found")
    error_of(http.post(f"/models/{uri}/load"), 404, "model_not_found")
    assert uri not in [m["model_uri"] for m in sidecar.client.health()["models"]]


# -- settings ---------------------------------------------------------------------------------


def test_settings_lists_every_value_and_describes_its_schema(http: httpx.Client) -> None:
    values = http.get("/settings").json()
    assert {"intra_op_parallelism", "inter_op_parallelism", "spin_control"} <= set(values)
    described = http.get("/settings", params={"describe": "1"}).json()
    assert described["values"] == values
    by_key = {s["key"]: s for s in described["schema"]}
    assert set(by_key) == set(values)
    threads = by_key["inter_op_parallelism"]
    assert (threads["type"], threads["default"], threads["min"], threads["unit"]) == (
        "int",
        1,
        1,
        "threads",
    )
    assert threads["help"]
    assert by_key["spin_control"]["type"] == "bool"


def test_bad_settings_change_nothing_and_name_each_bad_key(
    http: httpx.Client, sidecar: SidecarProcess
) -> None:
    before = http.get("/settings").json()
    response = http.put(
        "/settings", json={"max_wait_ms": 3, "inter_op_parallelism": 0, "nonsense": 1}
    )
    error = error_of(response, 422, "invalid_input")
    assert set(error["details"]) == {"inter_op_parallelism", "nonsense"}
    assert "at least 1" in error["details"]["inter_op_parallelism"]
    assert http.get("/settings").json() == before
    error_of(http.put("/settings", json=[1]), 422, "invalid_input")


def test_settings_change_is_persisted_and_accepts_text_values(
    http: httpx.Client, sidecar: SidecarProcess
) -> None:
    before = http.get("/settings").json()
    try:
        answer = http.put("/settings", json={"max_wait_ms": "3.5", "spin_control": "off"})
        assert answer.status_code == 200, answer.text
        assert (answer.json()["max_wait_ms"], answer.json()["spin_control"]) == (3.5, False)
        stored = json.loads((sidecar.var_dir / "sidecar" / "settings.json").read_text())
        assert (stored["max_wait_ms"], stored["spin_control"]) == (3.5, False)
        assert sidecar.client.settings()["max_wait_ms"] == 3.5
    finally:
        http.put("/settings", json={k: before[k] for k in ("max_wait_ms", "spin_control")})


def test_batch_settings_apply_live_to_loaded_models(http: httpx.Client) -> None:
    before = http.get("/settings").json()

    def runs() -> float:
        return metric_value(http.get("/metrics").text, "inference_batch_size_count", model=TINY_URI)

    try:
        assert (
            http.put("/settings", json={"max_batch_size": 1, "inter_op_parallelism": 2}).status_code
            == 200
        )
        start = runs()
        vectors_of(embed(http, input=TEXTS))
        assert runs() - start == len(TEXTS)  # one model run per text now
    finally:
        http.put(
            "/settings", json={k: before[k] for k in ("max_batch_size", "inter_op_parallelism")}
        )
    start = runs()
    vectors_of(embed(http, input=TEXTS))
    assert runs() - start == 1


# -- health, metrics, errors ------------------------------------------------------------------


def test_health_reports_loaded_models_and_version(http: httpx.Client) -> None:
    body = http.get("/health").json()
    assert body["status"] == "ok"
    assert {"model_uri": TINY_URI, "loaded": True} in body["models"]
    assert re.match(r"^\d+\.\d+", body["version"])
    assert 10 < body["memory_rss_mb"] < 100_000  # the process's resident memory, in MB


def test_metrics_count_requests_tokens_batches_and_errors(http: httpx.Client) -> None:
    embed(http, input=TEXTS)
    http.post("/v1/embeddings", json={"model": "nope:v1", "input": "cat"})
    text = http.get("/metrics").text
    assert metric_value(text, "inference_requests_total", route="/v1/embeddings", status="200") >= 1
    assert metric_value(text, "inference_requests_total", route="/v1/embeddings", status="404") >= 1
    assert (
        metric_value(text, "inference_request_duration_seconds_count", route="/v1/embeddings") >= 2
    )
    assert metric_value(text, "inference_errors_total", code="model_not_found") >= 1
    assert metric_value(text, "inference_tokens_total", model=TINY_URI) >= 3 * len(TEXTS)
    assert metric_value(text, "inference_texts_total", model=TINY_URI) >= len(TEXTS)
    assert metric_value(text, "inference_queue_wait_seconds_count", model=TINY_URI) >= 1
    assert metric_value(text, "inference_batch_tokens_count", model=TINY_URI) >= 1
    assert metric_value(text, "inference_models_loaded") >= 1


def test_unknown_route_and_method_are_json_errors(http: httpx.Client) -> None:
    error = error_of(http.get("/v2/nothing"), 404, "invalid_input")
    assert "/v2/nothing" in error["message"]
    error_of(http.get("/v1/embeddings"), 405, "invalid_input")


# -- the Python client ------------------------------------------------------------------------


def test_client_covers_the_api(
    sidecar: SidecarProcess, http: httpx.Client, prefixed_uri: str, matryoshka_uri: str
) -> None:
    client = sidecar.client
    assert client.health()["status"] == "ok"
    assert TINY_URI in [m["model_uri"] for m in client.models()]
    assert client.model(TINY_URI)["dimensions"] == HIDDEN
    assert {s["key"] for s in client.settings_schema()} == set(client.settings())
    facts = {m.uri: m for m in client.model_facts()}
    tiny = facts[TINY_URI]
    assert (tiny.dimensions, tiny.max_tokens, tiny.pooling, tiny.precision) == (
        HIDDEN,
        MAX_SEQ_LENGTH,
        "mean",
        "fp32",
    )
    assert tiny.loaded and tiny.normalize and tiny.created > 1_600_000_000
    assert (tiny.license_name, tiny.license_url, tiny.matryoshka_dimensions) == (None, None, [])
    declared = client.model_facts_of(matryoshka_uri)
    assert declared == facts[matryoshka_uri]
    assert declared.matryoshka_dimensions == MATRYOSHKA_DIMENSIONS
    assert (declared.license_name, declared.prefixes["query"]) == ("MIT", "query: ")
    with pytest.raises(InferenceError) as unknown:
        client.model_facts_of("nope:v1")
    assert (unknown.value.status, unknown.value.code) == (404, "model_not_found")

    vectors, usage = client.embed(TINY_URI, TEXTS)
    np.testing.assert_allclose(vectors, vectors_of(embed(http, input=TEXTS)), atol=1e-7)
    assert vectors.dtype == np.float32
    assert usage["total_tokens"] == usage["prompt_tokens"] > 0
    short, _ = client.embed(matryoshka_uri, "a red car", dimensions=8)
    assert short.shape == (1, 8)
    detailed = client.embed_detailed(TINY_URI, ["a red car", "cat " * 100, "hello world"])
    assert detailed.model == TINY_URI
    assert detailed.vectors.dtype == np.float32 and detailed.vectors.shape == (3, HIDDEN)
    np.testing.assert_allclose(detailed.vectors[0], vectors[1], atol=1e-7)  # "a red car"
    assert detailed.prompt_tokens == [5, MAX_SEQ_LENGTH, 4]
    assert detailed.truncated == [False, True, False]
    assert detailed.usage["prompt_tokens"] == sum(detailed.prompt_tokens)
    assert detailed.process_time_ms is not None and detailed.process_time_ms >= 0
    cut = client.embed_detailed(matryoshka_uri, "a red car", dimensions=8)
    assert cut.vectors.shape == (1, 8) and cut.prompt_tokens == [5] and cut.truncated == [False]
    with pytest.raises(InferenceError) as refused:
        client.embed_detailed(TINY_URI, ["a red car", "cat " * 100], truncate=False)
    assert (refused.value.status, refused.value.code) == (413, "input_too_long")
    query, _ = client.embed(prefixed_uri, ["the city"], input_type="query")
    spelled_out, _ = client.embed(prefixed_uri, ["query: the city"])
    np.testing.assert_allclose(query, spelled_out, atol=1e-6)


def test_client_raises_the_servers_error(sidecar: SidecarProcess) -> None:
    with pytest.raises(InferenceError) as excinfo:
        sidecar.client.embed("nope:v1", ["cat"])
    assert (excinfo.value.status, excinfo.value.code) == (404, "model_not_found")
    assert "nope:v1" in str(excinfo.value)
    with pytest.raises(InferenceError) as excinfo:
        sidecar.client.update_settings({"max_batch_size": 0})
    assert excinfo.value.status == 422
    assert "max_batch_size" in excinfo.value.message


def test_unexpected_failure_is_a_json_500_and_a_log_line(
    http: httpx.Client, sidecar: SidecarProcess, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # A manifest that misstates the dimensions loads, but its model's output cannot be served.
    uri = "tiny-misdescribed:v1"
    store_dir = make_store_dir(tiny_model_dir, tmp_path / "v1", uri=uri, dimensions=HIDDEN // 2)
    sidecar.client.register(uri, str(store_dir))
    try:
        response = http.post("/v1/embeddings", json={"model": uri, "input": "cat"})
        error = error_of(response, 500, "internal_error")
        assert error["type"] == "server_error"
        assert f"{HIDDEN // 2} dimensions" in error["message"]
        assert "unexpected error on POST /v1/embeddings" in sidecar.log()
        # The sidecar goes on serving.
        assert vectors_of(embed(http, input="cat")).shape == (1, HIDDEN)
    finally:
        sidecar.client.unregister(uri)
