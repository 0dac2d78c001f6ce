"""Embedding a job's texts on the worker that runs its batch, with the sidecar beside it.

A job set to embed on the workers (``EmbeddingJob.EmbedOn.WORKER``) takes its batches as any
job does, but its texts go to the sidecar at ``WORKER_INFERENCE_URL`` (one per worker machine)
instead of through the extension's ``create_embeddings`` on the server, and the vectors are
written in the batch's own transaction. The database host then only writes: backfills scale
with the worker machines.

Every vector must be the one ``create_embeddings`` gives on the server, so before a batch a
worker compares the model its sidecar serves with the one the server's sidecar serves (as
``azure_local_ai.model_metadata`` describes it): the same precision and the same sha256 for
every file. A sidecar that does not know the model yet gets it registered from the server's
own files where this machine sees them (a shared model store); otherwise, or when anything
differs, the worker refuses the batch (``WorkerRefused``), with a reason the job's page shows,
and leaves it to another worker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from django.conf import settings
from pgvector import Vector
from pgvector.psycopg.vector import register_vector_info
from psycopg.types import TypeInfo

from inference.client import InferenceClient, InferenceError, InferenceUnavailable

# A batch's texts, at the model's pace on one core; the server's array call has an hour.
EMBED_TIMEOUT_S = 600.0
CHECK_TIMEOUT_S = 120.0  # registering and loading a model the sidecar lacked
# The sidecar's codes for a text it refuses (the module maps them to SQLSTATE 22023 and
# 54000): the row's failure, not the worker's.
ROW_CODES = frozenset({"invalid_input", "input_too_long", "too_many_inputs", "request_too_large"})
MAX_LISTED_FILES = 3


class WorkerRefused(Exception):
    """This worker cannot embed the batch (``str()`` says why); another worker may."""


class RowRefused(Exception):
    """The worker's sidecar refused a text of the batch (``str()``: its message)."""


def client(timeout: float = EMBED_TIMEOUT_S) -> InferenceClient:
    return InferenceClient(
        settings.WORKER_INFERENCE_URL, settings.WORKER_INFERENCE_TOKEN, timeout=timeout
    )


def differences(server: Mapping[str, Any], local: Mapping[str, Any]) -> list[str]:
    """What the worker's registration of a model has that the server's has not: another
    precision, other files (by sha256). Empty when they serve the same model."""
    found = []
    theirs_at, ours_at = server.get("precision"), local.get("precision")
    if theirs_at != ours_at:
        found.append(f"precision {ours_at} where the server has {theirs_at}")
    theirs, ours = server.get("files") or {}, local.get("files") or {}
    if not theirs:
        found.append("no file hashes to compare: the server's sidecar lists none")
        return found
    other = sorted(name for name in set(theirs) | set(ours) if theirs.get(name) != ours.get(name))
    if other:
        listed = ", ".join(other[:MAX_LISTED_FILES])
        more = f" and {len(other) - MAX_LISTED_FILES} more" if len(other) > MAX_LISTED_FILES else ""
        found.append(f"other files ({listed}{more} differ in sha256)")
    return found


def check_model(sidecar: InferenceClient, server: Mapping[str, Any]) -> None:
    """Refuse unless the worker's sidecar serves the model ``server`` describes (the server's
    ``model_metadata``) with the same precision and files, loaded; a model it does not know
    is registered from the server's files first, where this machine has them."""
    uri = str(server["model_uri"])
    where = sidecar.base_url
    try:
        try:
            local = sidecar.model(uri)
        except InferenceError as exc:
            if exc.status != 404:
                raise
            local = _register(sidecar, server)
        found = differences(server, local)
        if found:
            raise WorkerRefused(
                f"the worker's sidecar at {where} serves {uri} with {'; '.join(found)}:"
                " its vectors would not be the server's. Deploy the same model there"
                " (unregister the other one first), or let other workers embed"
            )
        if not local.get("loaded"):
            sidecar.load(uri)
    except InferenceUnavailable:
        raise WorkerRefused(
            f"the worker's sidecar at {where} cannot be reached: start one beside the worker"
            " (manage.py worker --sidecar), or set WORKER_INFERENCE_URL to where it runs"
        ) from None
    except InferenceError as exc:
        raise WorkerRefused(f"the worker's sidecar at {where} refused {uri}: {exc}") from None


def _register(sidecar: InferenceClient, server: Mapping[str, Any]) -> dict[str, Any]:
    uri = str(server["model_uri"])
    path = server.get("model_path")
    if not path or not Path(str(path)).exists():
        raise WorkerRefused(
            f"the worker's sidecar at {sidecar.base_url} does not have {uri}, and the server's"
            f" files ({path or 'no path given'}) are not on this machine: share the model store"
            " with the workers, or register the same files with this sidecar"
        )
    return sidecar.register(
        uri,
        str(path),
        server.get("tokenizer_path") or None,
        precision=str(server.get("precision") or "fp32"),
    )


def embed(
    sidecar: InferenceClient, model_uri: str, texts: Sequence[str | None], batch_size: int
) -> list[np.ndarray | None]:
    """The vectors of ``texts`` (None for a NULL text, as ``create_embeddings`` gives), in
    requests of at most ``batch_size`` texts, cut to the model's max tokens as the server's
    calls are. A text the sidecar refuses raises RowRefused; anything else WorkerRefused."""
    vectors: list[np.ndarray | None] = [None] * len(texts)
    wanted = [i for i, text in enumerate(texts) if text is not None]
    for start in range(0, len(wanted), batch_size):
        part = wanted[start : start + batch_size]
        try:
            answer = sidecar.embed_detailed(model_uri, [str(texts[i]) for i in part])
        except InferenceError as exc:
            if exc.code in ROW_CODES:
                raise RowRefused(f"{exc.message} [{exc.code}, on the worker]") from None
            raise WorkerRefused(f"embedding on the worker's sidecar failed: {exc}") from None
        for i, vector in zip(part, answer.vectors, strict=True):
            vectors[i] = vector
    return vectors


def vector_cursor(conn: psycopg.Connection) -> psycopg.Cursor:
    """A cursor of ``conn`` that sends pgvector ``Vector`` values (and lists of them) in
    binary, so that the server only copies the floats."""
    cursor = conn.cursor()
    info = TypeInfo.fetch(conn, "vector")
    register_vector_info(cursor, info)
    return cursor


def as_vectors(rows: Sequence[np.ndarray | None]) -> list[Vector | None]:
    return [None if row is None else Vector(row) for row in rows]
