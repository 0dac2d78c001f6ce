"""The official OpenAI Python client works against the sidecar unchanged."""

from __future__ import annotations

import base64

import numpy as np
import openai
import pytest
from openai import OpenAI

from tests.fixtures.sidecar import TINY_URI, SidecarProcess
from tests.fixtures.tinymodel import HIDDEN

TEXTS = ["the cat is on the house", "vector search in postgres"]


@pytest.fixture(scope="module")
def client(sidecar: SidecarProcess) -> OpenAI:
    return OpenAI(base_url=sidecar.url + "/v1", api_key="x", max_retries=0)


def test_embeddings_with_the_default_base64_encoding(
    client: OpenAI, sidecar: SidecarProcess
) -> None:
    # The client asks for base64 unless told otherwise, and decodes it into floats.
    response = client.embeddings.create(model=TINY_URI, input=TEXTS)
    assert response.model == TINY_URI
    vectors = np.array([d.embedding for d in response.data], dtype=np.float32)
    assert vectors.shape == (len(TEXTS), HIDDEN)
    expected, usage = sidecar.client.embed(TINY_URI, TEXTS)
    np.testing.assert_allclose(vectors, expected, atol=1e-7)
    assert response.usage.prompt_tokens == response.usage.total_tokens == usage["prompt_tokens"]


def test_embeddings_with_float_encoding_match_base64(client: OpenAI) -> None:
    as_floats = client.embeddings.create(model=TINY_URI, input=TEXTS, encoding_format="float")
    # Asked for explicitly, base64 comes back as the string for the caller to decode.
    as_base64 = client.embeddings.create(model=TINY_URI, input=TEXTS, encoding_format="base64")
    floats = np.array([d.embedding for d in as_floats.data], dtype=np.float32)
    decoded = np.array(
        [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in as_base64.data]
    )
    np.testing.assert_array_equal(floats, decoded)
    assert [d.index for d in as_floats.data] == [0, 1]


def test_dimensions_and_extra_body(client: OpenAI, matryoshka_uri: str) -> None:
    short = client.embeddings.create(model=matryoshka_uri, input="a red car", dimensions=8)
    vector = np.array(short.data[0].embedding)
    assert vector.shape == (8,)
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    # A model not trained for shorter vectors refuses them.
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=TINY_URI, input="a red car", dimensions=8)
    assert TINY_URI in str(refused.value) and f"{HIDDEN} dimensions" in str(refused.value)
    query = client.embeddings.create(
        model=TINY_URI, input="a red car", extra_body={"input_type": "query"}
    )
    assert len(query.data[0].embedding) == HIDDEN


def test_models_list_and_retrieve(client: OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert TINY_URI in ids
    retrieved = client.models.retrieve(TINY_URI)
    assert (retrieved.id, retrieved.object, retrieved.owned_by) == (TINY_URI, "model", "local")


def test_errors_reach_the_client_as_openai_exceptions(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.embeddings.create(model="nope:v1", input="cat")
    assert "nope:v1" in str(not_found.value)
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model=TINY_URI, input=["cat", ""])
    assert "input[1]" in str(bad.value)
