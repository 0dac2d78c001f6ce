"""The compact binary embedding route used by the PostgreSQL module.

``POST /internal/embed?model=<uri>[&input_type=query|passage][&truncate=true|false]``
with ``Content-Type: application/octet-stream``.

Request body (all integers unsigned 32-bit little-endian)::

    count
    count x (byte_length, UTF-8 bytes)

Response 200 body, ``Content-Type: application/octet-stream``::

    count, dimensions
    count x dimensions float32 little-endian, rows in request order

The response also carries ``X-Prompt-Tokens``.

Reranking has a route of the same shape::

    POST /internal/rerank?[model=<uri>][&raw=true|false]

Its body holds the query and then the documents, as above (``count`` = 1 + documents, at least
two texts). Without ``model`` the sidecar uses its setting ``default_rerank_model``. Response
200 body: ``count`` (documents) then ``count`` float32 little-endian scores, in the documents'
order: the model's activation of each pair's logit (sigmoid), or with ``raw=true`` the logit.

Any other status of either route carries the JSON error body of the OpenAI-compatible API:
``{"error": {"message", "type", "param", "code"}}``; ``code`` is one of the ``ErrorCode``
values below, which the module maps to SQLSTATEs.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

PATH = "/internal/embed"
RERANK_PATH = "/internal/rerank"
CONTENT_TYPE = "application/octet-stream"
_U32 = struct.Struct("<I")
_HEADER = struct.Struct("<II")


class ErrorCode:
    """Error codes of the JSON error body (``error.code``) shared by every route."""

    INVALID_INPUT = "invalid_input"  # 400/422 -> SQLSTATE 22023
    INPUT_TOO_LONG = "input_too_long"  # 413 -> 22023 (only with truncate=false)
    TOO_MANY_INPUTS = "too_many_inputs"  # 413 -> 54000
    REQUEST_TOO_LARGE = "request_too_large"  # 413 -> 54000
    MODEL_NOT_FOUND = "model_not_found"  # 404 -> 42704
    MODEL_NOT_LOADED = "model_not_loaded"  # 409 -> 55000
    WRONG_MODEL_KIND = "wrong_model_kind"  # 400 -> 42809 (an embedder asked to rerank, ...)
    UNAUTHORIZED = "unauthorized"  # 401 -> 28000
    TIMEOUT = "timeout"  # 504 -> 57014 (the X-Timeout-Ms budget ran out)
    INTERNAL = "internal_error"  # 500 -> XX000


class ProtocolError(ValueError):
    pass


def encode_request(texts: Sequence[str]) -> bytes:
    parts = [_U32.pack(len(texts))]
    for text in texts:
        data = text.encode("utf-8")
        parts.append(_U32.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def decode_request(body: bytes) -> list[str]:
    """Parse a request body, raising ProtocolError with what is wrong."""
    if len(body) < 4:
        raise ProtocolError("binary request shorter than its 4-byte count")
    (count,) = _U32.unpack_from(body, 0)
    offset = 4
    texts: list[str] = []
    for index in range(count):
        if offset + 4 > len(body):
            raise ProtocolError(f"binary request truncated before input {index} of {count}")
        (length,) = _U32.unpack_from(body, offset)
        offset += 4
        if offset + length > len(body):
            raise ProtocolError(f"binary request truncated inside input {index} of {count}")
        try:
            texts.append(body[offset : offset + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise ProtocolError(f"input {index} is not valid UTF-8") from None
        offset += length
    if offset != len(body):
        raise ProtocolError(f"{len(body) - offset} unexpected bytes after {count} inputs")
    return texts


def encode_response(vectors: np.ndarray) -> bytes:
    rows, dims = vectors.shape
    return _HEADER.pack(rows, dims) + np.ascontiguousarray(vectors, dtype="<f4").tobytes()


def decode_response(body: bytes) -> np.ndarray:
    if len(body) < _HEADER.size:
        raise ProtocolError("binary response shorter than its header")
    rows, dims = _HEADER.unpack_from(body, 0)
    expected = _HEADER.size + rows * dims * 4
    if len(body) != expected:
        raise ProtocolError(f"binary response has {len(body)} bytes, expected {expected}")
    return np.frombuffer(body, dtype="<f4", offset=_HEADER.size).reshape(rows, dims)


def encode_scores(scores: np.ndarray) -> bytes:
    """The rerank route's response body: the count, then one float32 per document."""
    return _U32.pack(len(scores)) + np.ascontiguousarray(scores, dtype="<f4").tobytes()


def decode_scores(body: bytes) -> np.ndarray:
    if len(body) < _U32.size:
        raise ProtocolError("binary response shorter than its count")
    (count,) = _U32.unpack_from(body, 0)
    if len(body) != _U32.size + 4 * count:
        raise ProtocolError(f"binary response has {len(body)} bytes, expected {4 + 4 * count}")
    return np.frombuffer(body, dtype="<f4", offset=_U32.size)
