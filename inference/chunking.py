"""Splitting long texts into chunks by a model's own tokens, so that nothing is cut.

A text of at most ``size`` tokens is one chunk, unchanged. A longer one is cut into windows of
``size`` tokens, each sharing ``overlap`` tokens with the one before, as slices of the
original text (the tokenizer's offsets), so a chunk is the user's own words. Boundaries move
back to the start of a word where they can, so no word is cut unless it alone is longer than
a chunk. Every chunk is tokenized again and shortened until it fits: re-tokenizing a slice
may differ from the slice of the tokens (a word piece that starts a chunk), and the bound is a
promise, not an estimate.

The budget a caller may ask for is the model's ``max_tokens`` less its special tokens and the
input type's prefix: ``budget()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Encoding, Tokenizer


class ChunkingError(ValueError):
    """Sizes a caller cannot ask for; the message says which and why."""


@dataclass(frozen=True)
class Chunk:
    text: str
    tokens: int  # without special tokens and prefix
    start: int  # where it starts in the text (characters)


def budget(tokenizer: Tokenizer, max_tokens: int, prefix: str = "") -> int:
    """The most tokens a chunk may have so that, with the special tokens and ``prefix``, it
    still fits in ``max_tokens``."""
    specials = len(tokenizer.encode("", add_special_tokens=True).ids)
    prefix_tokens = len(tokenizer.encode(prefix, add_special_tokens=False).ids) if prefix else 0
    return max_tokens - specials - prefix_tokens


def check_sizes(size: int, overlap: int, limit: int) -> None:
    if size < 1:
        raise ChunkingError(f"the chunk size must be at least 1 token, got {size}")
    if size > limit:
        raise ChunkingError(
            f"chunks of {size} tokens do not fit this model: at most {limit} tokens remain "
            "once its special tokens and the input type's prefix are added"
        )
    if overlap < 0 or overlap >= size:
        raise ChunkingError(
            f"the overlap must be at least 0 and less than the chunk size ({size}), got {overlap}"
        )


def split(tokenizer: Tokenizer, texts: Sequence[str], size: int, overlap: int) -> list[list[Chunk]]:
    """The chunks of each text, in order. ``tokenizer`` must not truncate."""
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=False)
    pairs = zip(texts, encodings, strict=True)
    return [_split_one(tokenizer, text, enc, size, overlap) for text, enc in pairs]


def _split_one(
    tokenizer: Tokenizer, text: str, encoding: Encoding, size: int, overlap: int
) -> list[Chunk]:
    count = len(encoding.ids)
    if count <= size:
        return [Chunk(text, count, 0)]
    offsets = encoding.offsets
    words = encoding.word_ids
    chunks: list[Chunk] = []
    start = 0
    while True:
        end = min(start + size, count)
        if end < count:
            end = _word_start(words, end, floor=start + 1)
        piece, tokens, end = _fitting(tokenizer, text, offsets, start, end, size)
        chunks.append(Chunk(piece, tokens, offsets[start][0]))
        if end >= count:
            return chunks
        following = max(end - overlap, start + 1)
        start = _word_start(words, following, floor=start + 1)


def _word_start(words: list[int | None], index: int, *, floor: int) -> int:
    """``index`` moved back to the first token of its word, but not below ``floor``; when the
    whole stretch from ``floor`` is one word (longer than a chunk), ``index`` itself."""

    def inside(i: int) -> bool:
        return words[i] is not None and words[i] == words[i - 1]

    moved = index
    while moved > floor and inside(moved):
        moved -= 1
    return index if moved == floor and inside(floor) else moved


def _fitting(
    tokenizer: Tokenizer,
    text: str,
    offsets: list[tuple[int, int]],
    start: int,
    end: int,
    size: int,
) -> tuple[str, int, int]:
    """The slice of ``text`` for tokens ``start:end``, shortened until it tokenizes to at
    most ``size`` tokens; with its token count and the end it was shortened to."""
    while True:
        piece = text[offsets[start][0] : offsets[end - 1][1]]
        tokens = len(tokenizer.encode(piece, add_special_tokens=False).ids)
        if tokens <= size or end - start <= 1:
            return piece, tokens, end
        end -= 1
