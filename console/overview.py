"""What the overview page shows: the managed server, the sidecar and this machine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from django.conf import settings

from inference import catalog as model_catalog
from inference.client import InferenceClient
from serverparams.machine import Resources, resources
from serverparams.server import ServerError, ServerStatus, display_uri, get_managed_server

MODULE = "azure_local_ai"
# Calls made while rendering a page give up after this many seconds, so that a hung sidecar
# or server makes the page say it is unreachable instead of hanging it. Two seconds is also
# the shortest connect timeout libpq honours.
RENDER_TIMEOUT_S = 2


@dataclass
class ServerOverview:
    status: ServerStatus | None
    uri: str
    problem: str = ""
    pgvector_available: str | None = None
    pgvector_installed: str | None = None
    module_preloaded: bool = False
    allowlist: str | None = None  # SHOW azure.extensions; None when the module is not loaded

    @property
    def uptime_text(self) -> str:
        if self.status is None or self.status.uptime is None:
            return "-"
        minutes, seconds = divmod(int(self.status.uptime.total_seconds()), 60)
        hours, minutes = divmod(minutes, 60)
        days, hours = divmod(hours, 24)
        parts = [(days, "d"), (hours, "h"), (minutes, "min"), (seconds, "s")]
        shown = [f"{value} {unit}" for value, unit in parts if value]
        return " ".join(shown[:2]) or "0 s"

    @property
    def module_loaded(self) -> bool:
        return self.module_preloaded and self.allowlist is not None


@dataclass
class SidecarOverview:
    url: str
    reachable: bool
    problem: str = ""
    health: dict[str, Any] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        """URIs of the loaded models (``/health`` lists every registered model)."""
        return [
            str(model.get("model_uri"))
            for model in self.health.get("models", [])
            if isinstance(model, dict) and model.get("loaded")
        ]

    @property
    def models_by_kind(self) -> list[tuple[str, str]]:
        """The loaded models' URIs, each with its kind as the catalog says it ("Embedding",
        "Reranker"; "" for a model the catalog does not list)."""
        entries = {entry.uri: entry for entry in model_catalog.catalog().entries}
        labels = {"embedding": "Embedding", "reranker": "Reranker"}
        return [
            (uri, labels.get(entries[uri].kind, "") if uri in entries else "")
            for uri in self.models
        ]


def server_overview() -> ServerOverview:
    server = get_managed_server()
    overview = ServerOverview(status=None, uri=display_uri(server.uri()))
    overview.status = server.status(connect_timeout=RENDER_TIMEOUT_S)
    if not overview.status.running or overview.status.message:
        overview.problem = overview.status.message
        return overview
    try:
        with server.connect(connect_timeout=RENDER_TIMEOUT_S) as conn:
            row = conn.execute(
                "SELECT default_version, installed_version FROM pg_available_extensions"
                " WHERE name = 'vector'"
            ).fetchone()
            if row:
                overview.pgvector_available, overview.pgvector_installed = row
            preload = conn.execute("SHOW shared_preload_libraries").fetchone()
            libraries = [lib.strip() for lib in (preload[0] if preload else "").split(",")]
            overview.module_preloaded = MODULE in libraries
            try:
                shown = conn.execute("SHOW azure.extensions").fetchone()
                overview.allowlist = shown[0] if shown else ""
            except psycopg.errors.UndefinedObject:
                overview.allowlist = None
    except (ServerError, psycopg.Error) as exc:
        overview.problem = str(exc).strip()
    return overview


def sidecar_overview() -> SidecarOverview:
    url = settings.INFERENCE_URL
    try:
        with InferenceClient(url, settings.INFERENCE_TOKEN, timeout=RENDER_TIMEOUT_S) as client:
            health = client.health()
    except Exception as exc:  # any failure to reach it reads the same to the user
        return SidecarOverview(url=url, reachable=False, problem=str(exc).strip() or repr(exc))
    return SidecarOverview(url=url, reachable=True, health=dict(health))


def machine_overview() -> Resources:
    return resources(settings.VAR_DIR)
