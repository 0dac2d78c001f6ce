"""The playground's forms: texts to embed, documents to rank, the sample table to create, a
search."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError

from console.playground import demo, rerank
from console.playground.embedding import INPUT_TYPES, MAX_CHARS, MAX_TEXTS
from inference.client import ModelFacts


def _model_field(models: list[ModelFacts]) -> forms.ChoiceField:
    return forms.ChoiceField(
        label="Model",
        choices=[(m.uri, m.uri) for m in models],
        error_messages={
            "required": "Choose a model.",
            "invalid_choice": "%(value)s is not deployed (any more): choose a deployed model.",
        },
    )


# Examples in the empty text box: a question, its answer, and a text on another subject.
PLACEHOLDER = (
    "How do I keep bread fresh?",
    "Bread stays fresh longer in a cloth bag.",
    "Ein Index beschleunigt die Suche in der Datenbank.",
)


class _ModelChoiceForm(forms.Form):
    """A form whose first field chooses one of the deployed models."""

    def __init__(self, *args: object, models: list[ModelFacts], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.models = models
        self.fields = {"model": _model_field(models), **self.fields}

    def chosen_model(self) -> ModelFacts:
        uri = self.cleaned_data["model"]
        return next(m for m in self.models if m.uri == uri)


class EmbedForm(_ModelChoiceForm):
    input_type = forms.ChoiceField(
        label="Input type", choices=list(INPUT_TYPES.items()), initial="none"
    )
    texts = forms.CharField(
        label="Texts, one per line",
        widget=forms.Textarea(
            attrs={
                "rows": 6,
                "spellcheck": "false",
                "aria-describedby": "texts-help texts-error",
                "placeholder": "\n".join(PLACEHOLDER),
            }
        ),
        error_messages={"required": "Enter at least one text."},
    )

    def clean_texts(self) -> list[str]:
        lines = [line.strip() for line in self.cleaned_data["texts"].splitlines()]
        texts = [line for line in lines if line]
        if not texts:
            raise ValidationError("Enter at least one text.")
        problems = []
        if len(texts) > MAX_TEXTS:
            extra = len(texts) - MAX_TEXTS
            problems.append(
                f"{len(texts)} texts: at most {MAX_TEXTS} at a time. "
                f"Remove {extra} line{'s' if extra > 1 else ''}."
            )
        for number, text in enumerate(texts, 1):
            if len(text) > MAX_CHARS:
                problems.append(
                    f"Text {number} has {len(text):,} characters, more than {MAX_CHARS:,}: "
                    "shorten it or split it over several lines."
                )
        if problems:
            raise ValidationError(problems)
        return texts


class RerankForm(_ModelChoiceForm):
    """A query and the documents to rank against it; ``models`` are the deployed rerankers."""

    query = forms.CharField(
        label="Query",
        max_length=rerank.MAX_CHARS,
        error_messages={
            "required": "Type a query to rank the documents by.",
            "max_length": "The query has %(show_value)d characters; at most %(limit_value)d.",
        },
    )
    documents = forms.CharField(
        label="Documents, one per line",
        widget=forms.Textarea(
            attrs={"rows": 9, "spellcheck": "false", "aria-describedby": "documents-help"}
        ),
        error_messages={"required": "Enter at least one document."},
    )

    @classmethod
    def sample(cls, models: list[ModelFacts], model: str = "") -> RerankForm:
        """An unbound form showing the sample query and documents, ``model`` chosen."""
        return cls(
            models=models,
            initial={
                "model": model,
                "query": rerank.SAMPLE_QUERY,
                "documents": "\n".join(rerank.SAMPLE_DOCUMENTS),
            },
        )

    def clean_documents(self) -> list[str]:
        lines = [line.strip() for line in self.cleaned_data["documents"].splitlines()]
        documents = [line for line in lines if line]
        if not documents:
            raise ValidationError("Enter at least one document.")
        problems = []
        if len(documents) > rerank.MAX_DOCUMENTS:
            extra = len(documents) - rerank.MAX_DOCUMENTS
            problems.append(
                f"{len(documents)} documents: at most {rerank.MAX_DOCUMENTS} at a time. "
                f"Remove {extra} line{'s' if extra > 1 else ''}."
            )
        for number, document in enumerate(documents, 1):
            if len(document) > rerank.MAX_CHARS:
                problems.append(
                    f"Document {number} has {len(document):,} characters, more than "
                    f"{rerank.MAX_CHARS:,}: shorten it."
                )
        if problems:
            raise ValidationError(problems)
        return documents


class SetupForm(_ModelChoiceForm):
    """The model that embeds the sample documents."""


class SearchForm(forms.Form):
    q = forms.CharField(
        label="Query",
        max_length=demo.MAX_QUERY_CHARS,
        error_messages={
            "required": "Type something to search for.",
            "max_length": "The query has %(show_value)d characters; at most %(limit_value)d.",
        },
    )
    k = forms.IntegerField(
        label="Matches",
        min_value=1,
        max_value=demo.MAX_K,
        initial=demo.DEFAULT_K,
        required=False,
        error_messages={
            "min_value": "Ask for at least %(limit_value)s match.",
            "max_value": "At most %(limit_value)s matches.",
            "invalid": "The number of matches must be a whole number.",
        },
    )

    mode = forms.ChoiceField(
        label="Mode",
        choices=[
            ("vector", "Semantic (vector)"),
            ("hybrid", "Hybrid + rerank"),
        ],
        required=False,
    )
    reranker = forms.CharField(label="Reranker", required=False)

    def __init__(
        self, *args: object, rerankers: list[ModelFacts] | None = None, **kwargs: object
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.rerankers = rerankers or []

    def clean_k(self) -> int:
        return self.cleaned_data.get("k") or demo.DEFAULT_K

    def clean_mode(self) -> str:
        return self.cleaned_data.get("mode") or "vector"

    def clean(self) -> dict[str, object]:
        cleaned = super().clean() or {}
        if cleaned.get("mode") != "hybrid":
            return cleaned
        uris = [m.uri for m in self.rerankers]
        if not uris:
            raise ValidationError(
                "Hybrid search reranks with a reranker, and none is deployed: add one in "
                "Models > Add a model."
            )
        chosen = cleaned.get("reranker") or ""
        if chosen not in uris:
            self.add_error(
                "reranker",
                f"{chosen} is not a deployed reranker (any more): choose one of {', '.join(uris)}."
                if chosen
                else "Choose a reranker.",
            )
        return cleaned
