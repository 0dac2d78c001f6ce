"""The Jobs page's create form: what ``service.create`` needs, as a person types it.

The form checks what it can alone (required fields, numbers, the chunking section); the
server checks the rest (the table, its columns and key, the model), and ``add_job_error``
puts what it answered next to the field it is about.
"""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from console.jobs.models import DEFAULT_BATCH_SIZE, EmbeddingJob
from console.jobs.service import TUNING_LIMITS, JobError
from console.playground.embedding import INPUT_TYPES
from inference.client import ModelFacts

DEFAULT_COLUMN = "embedding"
MAX_BATCH_SIZE = int(TUNING_LIMITS["batch_size"][1])
MAX_WORKERS = int(TUNING_LIMITS["workers"][1])
DEFAULT_CHUNK_TOKENS = 256
CHUNK_TABLE_SUFFIX = "_chunks"

# The form field of each argument of service.create a JobError may name (the others share
# their name).
_ARGUMENT_FIELDS = {"model_uri": "model"}


def split_columns(text: str) -> list[str]:
    """``"title, body"`` -> ``["title", "body"]`` (commas or new lines between names)."""
    return [name.strip() for name in re.split(r"[,\n]", text) if name.strip()]


class ModelField(forms.ChoiceField):
    """The embedding models to choose from; a reranker's URI is refused naming its kind."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rerankers: set[str] = set()

    def validate(self, value: Any) -> None:
        if value in self.rerankers:
            raise ValidationError(
                "%(value)s is a reranker: it scores query-document pairs and gives no "
                "embeddings. Choose an embedding model.",
                code="reranker",
                params={"value": value},
            )
        super().validate(value)


class JobForm(forms.Form):
    database = forms.ChoiceField(
        label="Database",
        error_messages={
            "required": "Choose a database.",
            "invalid_choice": "%(value)s is not a database of the managed server (any more).",
        },
    )
    table = forms.CharField(
        label="Table",
        max_length=127,
        help_text="schema.table; without a schema, public.",
        widget=forms.TextInput(attrs={"placeholder": "public.docs", "spellcheck": "false"}),
        error_messages={"required": "Name the table whose rows to embed."},
    )
    key = forms.CharField(
        label="Key column",
        max_length=63,
        initial="id",
        help_text="Its primary key, or a unique column.",
        widget=forms.TextInput(attrs={"spellcheck": "false"}),
        error_messages={"required": "Name the column that identifies a row."},
    )
    columns = forms.CharField(
        label="Text columns",
        max_length=1000,
        help_text="The columns whose text is embedded, separated by commas.",
        widget=forms.TextInput(attrs={"placeholder": "title, body", "spellcheck": "false"}),
        error_messages={"required": "Name at least one text column."},
    )
    text_format = forms.CharField(
        label="Format",
        max_length=1000,
        required=False,
        help_text="Optional: how the columns are joined. Without one, one column per line.",
        widget=forms.TextInput(attrs={"placeholder": "{title}: {body}", "spellcheck": "false"}),
    )
    model = ModelField(
        label="Model",
        error_messages={
            "required": "Choose a model.",
            "invalid_choice": "%(value)s is not deployed (any more): choose a deployed model.",
        },
    )
    input_type = forms.ChoiceField(
        label="Input type", choices=list(INPUT_TYPES.items()), initial="none"
    )
    column = forms.CharField(
        label="Destination column",
        max_length=63,
        initial=DEFAULT_COLUMN,
        help_text="A vector column; it is created when missing.",
        widget=forms.TextInput(attrs={"spellcheck": "false"}),
        error_messages={"required": "Name the column the vectors go to."},
    )
    batch_size = forms.IntegerField(
        label="Batch size",
        min_value=1,
        max_value=MAX_BATCH_SIZE,
        initial=DEFAULT_BATCH_SIZE,
        help_text="Rows embedded and written per transaction.",
    )
    workers = forms.IntegerField(
        label="Workers",
        min_value=1,
        max_value=MAX_WORKERS,
        initial=1,
        help_text="Batches of this job that run at once.",
    )
    embed_on = forms.ChoiceField(
        label="Embed on",
        choices=EmbeddingJob.EmbedOn.choices,
        initial=EmbeddingJob.EmbedOn.SERVER,
        required=False,  # not given: the server, as before the choice existed
        help_text=(
            "The server: its sidecar embeds, on the database host's cores. The workers: each"
            " worker's own sidecar embeds with the server's model files, and the server only"
            " writes; backfills scale with worker machines."
        ),
    )
    chunking = forms.BooleanField(label="Split long texts into chunks", required=False)
    chunk_tokens = forms.IntegerField(
        label="Chunk size (tokens)",
        min_value=1,
        required=False,
        initial=DEFAULT_CHUNK_TOKENS,
    )
    chunk_overlap = forms.IntegerField(
        label="Overlap (tokens)",
        min_value=0,
        required=False,
        initial=0,
        help_text="Tokens a chunk shares with the one before.",
    )
    chunk_table = forms.CharField(
        label="Chunk table",
        max_length=63,
        required=False,
        help_text=f"Beside the table; empty: the table's name and {CHUNK_TABLE_SUFFIX}.",
        widget=forms.TextInput(attrs={"spellcheck": "false"}),
    )
    build_index = forms.BooleanField(
        label="Build an HNSW index (cosine) when the backfill is done", required=False
    )

    def __init__(
        self,
        *args: Any,
        databases: list[str],
        models: list[ModelFacts],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        database = self.fields["database"]
        model = self.fields["model"]
        assert isinstance(database, forms.ChoiceField) and isinstance(model, ModelField)
        database.choices = [(name, name) for name in databases]
        # Rerankers score pairs and give no vectors: a job embeds with embedding models only.
        model.choices = [
            (m.uri, f"{m.uri} ({m.dimensions} dimensions, up to {m.max_tokens} tokens)")
            for m in models
            if not m.is_reranker
        ]
        model.rerankers = {m.uri for m in models if m.is_reranker}
        self.job_error = ""  # a server's answer about no one field, shown above the form

    def clean_columns(self) -> list[str]:
        columns = split_columns(self.cleaned_data["columns"])
        if not columns:
            raise ValidationError("Name at least one text column.")
        return columns

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        assert data is not None
        if data.get("chunking"):
            tokens, overlap = data.get("chunk_tokens"), data.get("chunk_overlap") or 0
            if tokens is None:
                if "chunk_tokens" not in self.errors:
                    self.add_error("chunk_tokens", "Give the chunk size in tokens.")
            elif overlap >= tokens:
                self.add_error(
                    "chunk_overlap", f"The overlap must be smaller than the chunk ({tokens})."
                )
        return data

    def chunk_table_name(self) -> str:
        """The chunk table as typed, or ``<table>_chunks``."""
        typed = self.cleaned_data.get("chunk_table", "").strip()
        return typed or self.cleaned_data["table"].rpartition(".")[2] + CHUNK_TABLE_SUFFIX

    def create_arguments(self) -> dict[str, Any]:
        """``service.create``'s keyword arguments but the user. Chunking and the index are
        passed only when asked for."""
        data = self.cleaned_data
        arguments: dict[str, Any] = {
            "database": data["database"],
            "table": data["table"].strip(),
            "key": data["key"].strip(),
            "columns": data["columns"],
            "text_format": data["text_format"],
            "model_uri": data["model"],
            "input_type": data["input_type"],
            "column": data["column"].strip(),
            "batch_size": data["batch_size"],
            "workers": data["workers"],
            "embed_on": data["embed_on"] or EmbeddingJob.EmbedOn.SERVER,
        }
        if data["chunking"]:
            arguments["chunk_tokens"] = data["chunk_tokens"]
            arguments["chunk_overlap"] = data["chunk_overlap"] or 0
            arguments["chunk_table"] = self.chunk_table_name()
        if data["build_index"]:
            arguments["build_index"] = True
        return arguments

    def add_job_error(self, error: JobError) -> None:
        """Show the server's refusal next to the field it is about, or above the form."""
        name = _ARGUMENT_FIELDS.get(error.field or "", error.field)
        if name in self.fields:
            self.add_error(name, str(error))
        else:
            self.job_error = str(error)
