"""Splitting texts by a model's tokens: the chunker on all-MiniLM-L6-v2's real tokenizer, and
the sidecar's ``POST /chunks`` on the tiny model."""

from __future__ import annotations

import itertools

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from inference import chunking
from tests.fixtures.realmodel import minilm_package_dir
from tests.fixtures.sidecar import TINY_URI, SidecarProcess
from tests.fixtures.tinymodel import MAX_SEQ_LENGTH


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    tok = Tokenizer.from_file(str(minilm_package_dir() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def tokens(tokenizer: Tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


WORDS = st.sampled_from(
    "the quick brown fox jumps over lazy dogs extraordinarily-hyphenated café naïve "
    "Postgres vectors 42 3.14 (parenthesised) «quoted» 東京 Ünïcödé supercalifragilistic".split()
)
TEXTS = st.lists(WORDS, min_size=1, max_size=400).map(" ".join)


@settings(max_examples=100, deadline=None)
@given(text=TEXTS, size=st.integers(4, 64), data=st.data())
def test_chunks_fit_follow_the_text_in_order_and_cover_all_of_it(
    tokenizer: Tokenizer, text: str, size: int, data: st.DataObject
) -> None:
    overlap = data.draw(st.integers(0, size - 1))
    [chunks] = chunking.split(tokenizer, [text], size, overlap)
    for chunk in chunks:
        assert chunk.tokens == tokens(tokenizer, chunk.text) <= size
    if tokens(tokenizer, text) <= size:
        assert [c.text for c in chunks] == [text]
        return
    # Slices of the text, in order, from its first word to its last, leaving no gap.
    covered = 0
    for before, chunk in zip([None, *chunks], chunks, strict=False):
        assert text[chunk.start : chunk.start + len(chunk.text)] == chunk.text
        assert before is None or chunk.start > before.start
        assert not text[covered : chunk.start].strip(), "a gap between chunks"
        covered = max(covered, chunk.start + len(chunk.text))
    assert not text[covered:].strip(), "the end of the text is in no chunk"


def test_a_text_that_fits_is_one_chunk_unchanged(tokenizer: Tokenizer) -> None:
    text = "  a short text, kept exactly as written  "
    assert chunking.split(tokenizer, [text], 32, 4) == [
        [chunking.Chunk(text, tokens(tokenizer, text), 0)]
    ]


def test_overlap_repeats_the_end_of_a_chunk_at_the_start_of_the_next(tokenizer: Tokenizer) -> None:
    text = " ".join(f"w{i}" for i in range(200))
    chunks = [c.text for c in chunking.split(tokenizer, [text], 40, 10)[0]]
    assert len(chunks) > 3
    for before, after in itertools.pairwise(chunks):
        assert after.split()[0] in before.split(), (before, after)


def test_words_are_not_cut_unless_one_is_longer_than_a_chunk(tokenizer: Tokenizer) -> None:
    text = " ".join(["supercalifragilisticexpialidocious"] * 30)
    for chunk in chunking.split(tokenizer, [text], 16, 0)[0]:
        assert set(chunk.text.split()) == {"supercalifragilisticexpialidocious"}
    word = "qzxvkj" * 15  # one word of many word pieces
    [long_word] = chunking.split(tokenizer, [word], 8, 0)
    assert len(long_word) > 1 and "".join(c.text for c in long_word) == word


def test_the_budget_leaves_room_for_special_tokens_and_the_prefix(tokenizer: Tokenizer) -> None:
    assert chunking.budget(tokenizer, 256) == 254  # [CLS] ... [SEP]
    assert chunking.budget(tokenizer, 256, "passage: ") == 254 - tokens(tokenizer, "passage: ")


@pytest.mark.parametrize(
    ("size", "overlap", "message"),
    [(0, 0, "at least 1 token"), (300, 0, "at most 254 tokens"), (10, 10, "less than the chunk")],
)
def test_sizes_that_cannot_work_are_refused_saying_why(
    size: int, overlap: int, message: str
) -> None:
    with pytest.raises(chunking.ChunkingError, match=message):
        chunking.check_sizes(size, overlap, 254)


# -- the sidecar's route ---------------------------------------------------------------------


LONG = " ".join(["hello world the cat is on the house"] * 20)


def test_the_route_splits_so_that_every_chunk_embeds_without_being_cut(
    http: httpx.Client, sidecar: SidecarProcess
) -> None:
    size = MAX_SEQ_LENGTH - 2 - 4  # room for [CLS] [SEP] and a prefix
    answer = http.post(
        "/chunks",
        json={"model": TINY_URI, "input": [LONG, "short"], "size": size, "overlap": 3},
    )
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert [row["index"] for row in data] == [0, 1]
    assert [c["text"] for c in data[1]["chunks"]] == ["short"]
    parts = [c["text"] for c in data[0]["chunks"]]
    assert len(parts) > 1 and all(c["tokens"] <= size for c in data[0]["chunks"])
    assert sidecar.client.chunks(TINY_URI, [LONG, "short"], size, 3) == [parts, ["short"]]
    details = sidecar.client.embed_detailed(TINY_URI, parts, truncate=False)
    assert not any(details.truncated) and max(details.prompt_tokens) <= MAX_SEQ_LENGTH


@pytest.mark.parametrize(
    ("body", "status", "param", "message"),
    [
        ({"size": 31}, 400, "size", "at most 30 tokens remain"),
        ({"size": 8, "overlap": 8}, 400, "size", "less than the chunk size"),
        ({"size": "8"}, 422, "size", "whole number of tokens"),
        ({"size": 8, "overlap": -1}, 422, "overlap", "whole number of tokens"),
        ({"size": 8, "input": "text"}, 422, "input", "list of strings"),
        ({"size": 8, "input": []}, 400, "input", "empty list"),
        ({"size": 8, "model": "nope:v1"}, 404, "model", "nope:v1"),
    ],
)
def test_the_route_refuses_bad_requests_naming_the_field(
    http: httpx.Client, body: dict[str, object], status: int, param: str, message: str
) -> None:
    answer = http.post("/chunks", json={"model": TINY_URI, "input": [LONG], **body})
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and message in error["message"]
