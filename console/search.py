"""The top bar's search: pages, server parameters, models (by URI, title or kind), deployments
and embedding jobs that match a query.

Each kind of result is found where it lives: the menu (pages), the managed server's
``pg_settings`` (parameters, opening the blade filtered on the name), the model catalog, the
deployments table and the embedding jobs table. The managed server is asked with the short
timeout of a page render; when it cannot answer, the other groups are still returned and the
parameters group says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlencode

import psycopg
from django.db.models import Q
from django.urls import reverse

from console.deployments.models import Deployment
from console.jobs.models import EmbeddingJob
from console.navigation import menu
from console.overview import RENDER_TIMEOUT_S
from inference import catalog as model_catalog
from serverparams.server import ServerError, get_managed_server

PER_GROUP = 6
MAX_QUERY = 100

_PARAMETERS_QUERY = """
SELECT name, short_desc FROM pg_settings
WHERE name ILIKE %(like)s OR short_desc ILIKE %(like)s
ORDER BY name NOT ILIKE %(prefix)s, name ILIKE %(like)s DESC, lower(name)
LIMIT %(limit)s
"""


@dataclass(frozen=True)
class Hit:
    title: str
    detail: str
    url: str


@dataclass
class Group:
    title: str
    hits: list[Hit] = field(default_factory=list)
    problem: str = ""


def _like(query: str) -> str:
    escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _pages(needle: str) -> Group:
    hits = [
        Hit(item.label, "Page", item.url)
        for item in menu()
        if needle in item.label.lower() or needle in item.key or needle in item.keywords
    ]
    return Group("Pages", hits[:PER_GROUP])


def _parameters(query: str) -> Group:
    group = Group("Server parameters")
    escaped = _like(query)
    try:
        with get_managed_server().connect(connect_timeout=RENDER_TIMEOUT_S) as conn:
            rows = conn.execute(
                _PARAMETERS_QUERY,
                {"like": escaped, "prefix": escaped[1:], "limit": PER_GROUP},
            ).fetchall()
    except (ServerError, psycopg.Error):
        group.problem = "the managed server cannot be reached"
        return group
    blade = reverse("serverparams:blade")
    group.hits = [Hit(name, desc or "", f"{blade}?{urlencode({'q': name})}") for name, desc in rows]
    return group


_KIND_LABELS = {"embedding": "Embedding model", "reranker": "Reranker"}


def _models(needle: str) -> Group:
    """Catalog models whose URI, title or kind ("reranker", "embedding") holds ``needle``;
    each hit says its kind."""
    hits = []
    for entry in model_catalog.catalog().entries:
        kind = _KIND_LABELS.get(entry.kind, entry.kind)
        if needle in entry.uri.lower() or needle in entry.title.lower() or needle in kind.lower():
            detail = f"{kind}, {entry.title}" if entry.title else kind
            hits.append(Hit(entry.uri, detail, reverse("deployments:model", args=[entry.uri])))
    return Group("Models", hits[:PER_GROUP])


def _deployments(needle: str) -> Group:
    rows = Deployment.objects.all()
    number = needle.lstrip("#")
    if number.isdigit():
        rows = rows.filter(pk=int(number))
    else:
        rows = rows.filter(model_uri__icontains=needle)
    hits = [
        Hit(
            f"#{d.pk} {d.get_action_display().lower()} {d.model_uri}",
            d.status_label,
            reverse("deployments:detail", args=[d.pk]),
        )
        for d in rows[:PER_GROUP]
    ]
    return Group("Deployments", hits)


def _jobs(needle: str) -> Group:
    rows = EmbeddingJob.objects.exclude(state=EmbeddingJob.State.DELETED)
    number = needle.lstrip("#")
    if number.isdigit():
        rows = rows.filter(pk=int(number))
    else:
        rows = rows.filter(
            Q(table_name__icontains=needle)
            | Q(destination_column__icontains=needle)
            | Q(model_uri__icontains=needle)
        )
    hits = [
        Hit(
            f"#{job.pk} {job.qualified_table} → {job.destination_column}",
            f"Embedding job, {job.model_uri}, {job.get_state_display().lower()}",
            reverse("jobs:detail", args=[job.pk]),
        )
        for job in rows[:PER_GROUP]
    ]
    return Group("Embedding jobs", hits)


def search(query: str) -> list[Group]:
    """The groups with hits (or a problem) for ``query``; none for an empty query."""
    query = query.strip()[:MAX_QUERY]
    if not query:
        return []
    needle = query.lower()
    groups = [
        _pages(needle),
        _parameters(query),
        _models(needle),
        _deployments(needle),
        _jobs(needle),
    ]
    return [group for group in groups if group.hits or group.problem]
