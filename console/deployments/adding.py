"""Adding a model to the catalog and removing one: what the Models page and the ``addmodel`` /
``removemodel`` commands call.

Adding inspects the source again (what was shown is not trusted from the form), stores the
entry in the added models' catalog and starts its deployment; if the deployment cannot be
started, the entry is dropped again, so nothing is half-added. A source is an embedding model
or a cross-encoder, added as a reranker (``kind`` insists on one). Removing is refused while an
embedding job or a generated column of the managed server names the model, or, for a
reranker, while the sidecar's setting default_rerank_model does (rank() calls are not stored
anywhere to look for); otherwise the model is unloaded and unregistered, its files leave the
store and its entry the catalog.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg
from django.db.models import Q

from console import sidecar as console_sidecar
from console.databases import managed_databases
from console.deployments import service
from console.deployments.models import Deployment
from console.jobs.models import EmbeddingJob
from console.overview import RENDER_TIMEOUT_S
from inference import catalog as model_catalog
from inference.catalog import CatalogError, ModelURIError, parse_uri
from inference.client import InferenceError, InferenceUnavailable
from inference.intake import Inspection, IntakeError, inspect_source
from inference.store import PRECISIONS, ModelStore
from serverparams.server import ServerError, get_managed_server

log = logging.getLogger(__name__)

# The sidecar setting naming the reranker of requests that name none.
RERANK_SETTING = "default_rerank_model"


class AddModelError(ValueError):
    """The model cannot be added as asked; ``errors`` by field ("source", "uri")."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = errors


class RemoveModelError(ValueError):
    """The model cannot be removed; the message says why (and which job or column holds it)."""


def inspect(source: str, kind: str | None = None) -> Inspection:
    """Inspect ``source`` (``kind``: "embedding" or "reranker" refuses a source of the other
    kind; None takes either); AddModelError when it cannot be read at all."""
    try:
        return inspect_source(source, kind=kind)
    except IntakeError as exc:
        raise AddModelError({"source": str(exc)}) from None


def facts(inspection: Inspection) -> list[tuple[str, str]]:
    """The inspection's facts for people, its kind first: what the rest is read as."""
    rows = inspection.facts()
    return sorted(rows, key=lambda row: row[0] != "Kind")


def precisions_for(inspection: Inspection) -> tuple[str, ...]:
    """The precisions an inspected model may be deployed at: both for either kind (each has
    its own int8 gate), none for a model of neither kind."""
    return PRECISIONS if inspection.kind is not None else ("fp32",)


def check_uri(uri: str) -> str | None:
    """Why ``uri`` cannot name an added model (None: it can)."""
    try:
        parse_uri(uri)
    except ModelURIError as exc:
        return str(exc)
    if model_catalog.catalog().find(uri) is not None:
        return f"the catalog already has a model {uri}; choose another name or version"
    return None


def add_model(
    source: str,
    uri: str,
    user: service.User,
    *,
    precision: str = "fp32",
    kind: str | None = None,
) -> tuple[Inspection, Deployment]:
    """Inspect ``source`` again (as ``kind``, if given), add it to the catalog as ``uri`` and
    start its deployment."""
    inspection = inspect(source, kind)
    errors: dict[str, str] = {}
    if not inspection.ok:
        errors["source"] = "; ".join(map(str, inspection.refusals))
    elif precision not in precisions_for(inspection):
        errors["precision"] = (
            f"a {inspection.kind} is deployed at {' or '.join(precisions_for(inspection))}: "
            f"no {precision} variant is offered for it"
        )
    uri = uri.strip() or inspection.proposed_uri
    if (problem := check_uri(uri)) is not None:
        errors["uri"] = problem
    if errors:
        raise AddModelError(errors)
    name = user.get_username() or "system"
    try:
        model_catalog.add_entry(inspection.entry(uri, added_by=name))
    except CatalogError as exc:
        raise AddModelError({"uri": str(exc)}) from None
    try:
        deployment = service.start(uri, user, precision=precision)
    except Exception:
        model_catalog.remove_entry(uri)
        raise
    return inspection, deployment


@dataclass(frozen=True)
class GeneratedColumn:
    database: str
    table: str
    column: str

    def __str__(self) -> str:
        return f"{self.database}: {self.table}.{self.column}"


_GENERATED_SQL = """
SELECT c.oid::regclass::text, a.attname
FROM pg_attribute a
JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
JOIN pg_class c ON c.oid = a.attrelid
WHERE a.attgenerated <> '' AND NOT a.attisdropped
  AND strpos(pg_get_expr(d.adbin, d.adrelid), %s) > 0
ORDER BY 1, 2
"""


def generated_columns(uri: str) -> list[GeneratedColumn]:
    """Generated columns in the managed server's databases whose expression names ``uri``."""
    found = []
    server = get_managed_server()
    for database in managed_databases():
        try:
            with server.connect(dbname=database) as conn:
                rows = conn.execute(_GENERATED_SQL, (uri,)).fetchall()
        except psycopg.Error as exc:
            log.warning("cannot look for generated columns in %s: %s", database, exc)
            continue
        found += [GeneratedColumn(database, table, column) for table, column in rows]
    return found


def removal_blockers(uri: str) -> list[str]:
    """What still names ``uri`` and so stops its removal (empty: it can go)."""
    blockers = []
    entry = model_catalog.catalog().find(uri)
    if entry is None:
        return [f"there is no model {uri} in the catalog"]
    if entry.added is None:
        return [f"{uri} ships with the product and cannot be removed; disable it instead"]
    active = Deployment.objects.filter(model_uri=uri, state__in=Deployment.ACTIVE_STATES).first()
    if active is not None:
        blockers.append(f"deployment #{active.pk} of it is {active.get_state_display().lower()}")
    jobs = EmbeddingJob.objects.filter(Q(model_uri=uri) | Q(next_model_uri=uri)).exclude(
        state=EmbeddingJob.State.DELETED
    )
    for job in jobs:
        blockers.append(
            f"embedding job #{job.pk} ({job.database}: {job.qualified_table}."
            f"{job.destination_column}) embeds with it"
        )
    if entry.kind == "reranker":
        blockers += _rerank_setting_blockers(uri)
    try:
        columns = generated_columns(uri)
    except (ServerError, psycopg.Error) as exc:
        blockers.append(
            f"the managed server cannot be asked whether a generated column uses it ({exc}); "
            "start it and try again"
        )
    else:
        blockers += [f"the generated column {column} calls it" for column in columns]
    return blockers


def _rerank_setting_blockers(uri: str) -> list[str]:
    """The sidecar's setting default_rerank_model naming ``uri`` blocks its removal: rank()
    calls and rerank requests that name no model would fail. The setting is left for its owner
    to change rather than cleared here."""
    try:
        with console_sidecar.sidecar_client(RENDER_TIMEOUT_S) as client:
            current = str(client.settings().get(RERANK_SETTING) or "")
    except (InferenceError, InferenceUnavailable) as exc:
        return [
            f"the inference sidecar cannot be asked whether its setting {RERANK_SETTING} names "
            f"it ({exc}); start it and try again"
        ]
    if current != uri:
        return []
    return [
        f"the inference sidecar's setting {RERANK_SETTING} names it, so rank() and rerank "
        "requests that name no model use it; choose another reranker or (none) for "
        f"{RERANK_SETTING} on the Settings page first (removal does not change the setting)"
    ]


def remove_model(uri: str) -> None:
    """Unload and unregister ``uri``, delete its files and drop its catalog entry; refused
    (RemoveModelError, nothing changed) while anything still names it."""
    blockers = removal_blockers(uri)
    if blockers:
        raise RemoveModelError(f"{uri} cannot be removed: " + "; ".join(blockers))
    try:
        with console_sidecar.sidecar_client(60) as client:
            try:
                client.unregister(uri)
            except InferenceError as exc:
                if exc.status != 404:
                    raise
    except (InferenceError, InferenceUnavailable) as exc:
        raise RemoveModelError(
            f"{uri} cannot be removed: the inference sidecar did not unload it ({exc}); "
            "nothing was removed"
        ) from None
    ModelStore().remove(uri)
    model_catalog.remove_entry(uri)
