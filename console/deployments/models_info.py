"""What the models pages show about each catalog model: the catalog's facts, the store's
files and quality figures, the sidecar's live state and the latest deployment."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from django.conf import settings

from console.deployments import queries
from console.deployments.models import Deployment
from console.overview import RENDER_TIMEOUT_S
from inference import catalog as model_catalog
from inference.catalog import CatalogEntry
from inference.client import InferenceClient, ModelFacts
from inference.store import PRECISIONS, ModelStore, StoredModel, StoreError


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int
    sha256: str


@dataclass
class ModelInfo:
    entry: CatalogEntry
    stored: StoredModel | None
    store_problem: str = ""
    sidecar: ModelFacts | None = None  # as GET /v1/models gives it, when registered
    sidecar_problem: str = ""
    latest: Deployment | None = None
    memory_rss_mb: float | None = None  # the sidecar process's resident memory
    files: list[FileInfo] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return self.entry.uri

    @property
    def kind(self) -> str:
        """ "embedding" or "reranker" (``inference.modelconfig.MODEL_KINDS``)."""
        return self.entry.kind

    @property
    def is_reranker(self) -> bool:
        return self.entry.kind == "reranker"

    @property
    def kind_label(self) -> str:
        return "Reranker" if self.is_reranker else "Embedding"

    @property
    def loaded(self) -> bool:
        return bool(self.sidecar and self.sidecar.loaded)

    @property
    def serving_precision(self) -> str:
        return self.sidecar.precision if self.loaded and self.sidecar else ""

    @property
    def deploying(self) -> bool:
        return bool(self.latest and self.latest.is_active)

    @property
    def state_label(self) -> str:
        if self.deploying and self.latest is not None:
            verb = "Deploying" if self.latest.action == Deployment.Action.ENABLE else "Disabling"
            return f"{verb}: {queries.current_step(self.latest)}"
        if self.loaded:
            return "Deployed"
        if self.stored is not None:
            return "In the store, not loaded"
        return "Not deployed"

    @property
    def source_label(self) -> str:
        """Where an added model came from, short: the Hub repository, or the folder's name
        (the full path is the models page's tooltip and the model page's Added row)."""
        added = self.entry.added or {}
        source = str(added.get("source") or "")
        if self.entry.local_path:
            return f"folder {PurePath(self.entry.local_path).name}"
        return source

    @property
    def parity(self) -> dict[str, Any] | None:
        """The parity gate's figures (serving graph against the original), if it ran."""
        if self.stored is None:
            return None
        return (self.stored.manifest.get("quality") or {}).get("parity")

    @property
    def quality(self) -> dict[str, Any] | None:
        if self.stored is None:
            return None
        return (self.stored.manifest.get("quality") or {}).get("int8")

    @property
    def precisions(self) -> list[str]:
        return self.stored.precisions if self.stored else []

    @property
    def precision_wanted(self) -> str:
        return "int8" if "int8" in self.precisions and self.entry.offers_int8 else "fp32"

    @property
    def offered_precisions(self) -> tuple[str, ...]:
        """The precisions a deployment of it may ask for: int8 only where its gate exists."""
        return offered_precisions(self.entry)

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def remote_sources(self) -> list[str]:
        """The source kinds to name in the deploy form ("local" is a folder path there)."""
        return [kind for kind in self.entry.sources if kind != "local"]

    @property
    def languages(self) -> str:
        return str(self.entry.raw.get("languages") or "")


def offered_precisions(entry: CatalogEntry) -> tuple[str, ...]:
    """``PRECISIONS`` less int8 for a model whose entry gives no int8 quality thresholds."""
    return tuple(p for p in PRECISIONS if p != "int8" or entry.offers_int8)


def _sidecar_models() -> tuple[dict[str, ModelFacts], float | None, str]:
    """What the sidecar serves (the facts of GET /v1/models) and its resident memory."""
    try:
        with InferenceClient(
            settings.INFERENCE_URL, settings.INFERENCE_TOKEN, timeout=RENDER_TIMEOUT_S
        ) as client:
            models = {facts.uri: facts for facts in client.model_facts()}
            health = client.health()
    except Exception as exc:  # any failure reads the same: the page says it cannot tell
        return {}, None, str(exc).strip() or type(exc).__name__
    rss = health.get("memory_rss_mb")
    return models, float(rss) if isinstance(rss, int | float) else None, ""


def _info(
    entry: CatalogEntry,
    store: ModelStore,
    sidecar: dict[str, ModelFacts],
    rss: float | None,
    problem: str,
    latest: dict[str, Deployment],
) -> ModelInfo:
    try:
        stored = store.get(entry.uri)
        store_problem = ""
    except StoreError as exc:
        stored, store_problem = None, str(exc)
    info = ModelInfo(
        entry=entry,
        stored=stored,
        store_problem=store_problem,
        sidecar=sidecar.get(entry.uri),
        sidecar_problem=problem,
        latest=latest.get(entry.uri),
        memory_rss_mb=rss,
    )
    if stored is not None:
        for rel, sha in sorted((stored.manifest.get("files") or {}).items()):
            path = stored.path / rel
            size = path.stat().st_size if path.is_file() else 0
            info.files.append(FileInfo(path=rel, size=size, sha256=sha))
    return info


def all_models() -> list[ModelInfo]:
    store = ModelStore()
    sidecar, rss, problem = _sidecar_models()
    latest = queries.latest_by_model()
    return [
        _info(entry, store, sidecar, rss, problem, latest)
        for entry in model_catalog.catalog().entries
    ]


def model(uri: str) -> ModelInfo | None:
    entry = model_catalog.catalog().find(uri)
    if entry is None:
        return None
    sidecar, rss, problem = _sidecar_models()
    return _info(entry, ModelStore(), sidecar, rss, problem, queries.latest_by_model())
