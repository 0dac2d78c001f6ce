"""The SQL and the ``curl`` command that reproduce what the playground shows.

Users copy these into psql or a shell, so every text they typed is quoted for where it goes:
SQL string constants by ``sql_literal``, the request body by ``shlex.quote``.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence

SCHEMA = "azure_local_ai"
# input type -> the function that embeds one text with the model's prefix for it
FUNCTIONS = {"none": "create_embeddings", "query": "embed_query", "passage": "embed_passage"}


def sql_literal(text: str) -> str:
    """``text`` as a PostgreSQL string constant.

    Quotes are doubled. A text with a backslash becomes an escape string (``E'...'``, the
    backslash doubled), which reads the same whatever ``standard_conforming_strings`` says.
    PostgreSQL text cannot hold NUL, so the forms refuse it before this.
    """
    if "\0" in text:
        raise ValueError("PostgreSQL text cannot contain NUL characters")
    quoted = text.replace("'", "''")
    if "\\" in text:
        return "E'" + quoted.replace("\\", "\\\\") + "'"
    return "'" + quoted + "'"


def sql_array(texts: Sequence[str], indent: str = "    ") -> str:
    """``ARRAY[...]`` of string constants, one per line."""
    items = f",\n{indent}".join(sql_literal(text) for text in texts)
    return f"ARRAY[\n{indent}{items}\n{indent[:-2]}]"


def embeddings_sql(model: str, texts: Sequence[str], input_type: str) -> str:
    """One statement giving, per text in input order, its dimensions, norm, cosine
    similarity to every text and its embedding. Needs the ``vector`` and ``azure_local_ai``
    extensions in the database."""
    function = f"{SCHEMA}.{FUNCTIONS[input_type]}"
    if input_type == "none":
        # The array overload embeds all texts in one call and returns rows in input order.
        source = (
            f"  SELECT n, embedding::vector AS embedding\n"
            f"  FROM {function}(\n    {sql_literal(model)},\n    {sql_array(texts, ' ' * 6)}\n"
            f"  ) WITH ORDINALITY AS t(embedding, n)"
        )
    else:
        source = (
            f"  SELECT n, {function}({sql_literal(model)}, input)::vector AS embedding\n"
            f"  FROM unnest({sql_array(texts, ' ' * 6)}) WITH ORDINALITY AS t(input, n)"
        )
    similarity = (
        "       ARRAY(SELECT 1 - (a.embedding <=> b.embedding) FROM e AS b ORDER BY b.n)"
        " AS cosine,\n"
        if len(texts) > 1
        else ""
    )
    return (
        f"WITH e AS (\n{source}\n)\n"
        "SELECT a.n, vector_dims(a.embedding) AS dimensions,\n"
        "       vector_norm(a.embedding) AS norm,\n"
        f"{similarity}"
        "       a.embedding\n"
        "FROM e AS a\n"
        "ORDER BY a.n;"
    )


def embeddings_body(model: str, texts: Sequence[str], input_type: str) -> dict[str, object]:
    """The ``/v1/embeddings`` request body for the same inputs."""
    body: dict[str, object] = {"model": model, "input": list(texts)}
    if input_type != "none":
        body["input_type"] = input_type
    return body


def rank_sql(model: str, query: str, documents: Sequence[str]) -> str:
    """``rank`` of the documents against the query: one row per document, best first, its
    ``document_id`` the document's position in the list (from 1). Needs the
    ``azure_local_ai`` extension (1.1.0 or later) in the database."""
    return (
        "SELECT r.rank, r.document_id, r.relevance_score\n"
        f"FROM {SCHEMA}.rank(\n"
        f"       {sql_literal(query)},\n"
        f"       {sql_array(documents, ' ' * 9)},\n"
        f"       model => {sql_literal(model)}\n"
        "     ) AS r\n"
        "ORDER BY r.rank;"
    )


def rerank_body(model: str, query: str, documents: Sequence[str]) -> dict[str, object]:
    """The ``/v1/rerank`` (Cohere's shape) request body for the same inputs."""
    return {"model": model, "query": query, "documents": list(documents)}


def curl_command(
    base_url: str, body: dict[str, object], *, token: bool, path: str = "/v1/embeddings"
) -> str:
    """``curl`` posting ``body`` to the sidecar's ``path``. With ``token`` it sends
    ``$INFERENCE_TOKEN`` from the caller's environment (the token itself is never shown)."""
    lines = ["curl -sS"]
    if base_url.startswith("unix:"):
        lines[0] += f" --unix-socket {shlex.quote(base_url.removeprefix('unix:'))}"
        url = "http://sidecar" + path
    else:
        url = base_url.rstrip("/") + path
    lines[0] += f" {shlex.quote(url)}"
    lines.append("-H 'Content-Type: application/json'")
    if token:
        lines.append('-H "Authorization: Bearer $INFERENCE_TOKEN"')
    lines.append("-d " + shlex.quote(json.dumps(body, ensure_ascii=False)))
    return " \\\n  ".join(lines)
