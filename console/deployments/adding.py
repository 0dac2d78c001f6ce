"""Adding a model to the catalog and removing one: what the Models page and the ``addmodel`` /
``removemodel`` commands call.

Adding inspects the source again (what was shown is not trusted from the form), stores the
entry in the added models' catalog and starts its deployment; if the deployment cannot be
started, the entry is dropped again, so nothing is half-added. Removing is refused while an
embedding job or a generated column of the managed server names the model; otherwise the
model is unloaded and unregistered, its files leave the store and its entry the catalog.
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
from inference import catalog as model_catalog
from inference.catalog import CatalogError, ModelURIError, parse_uri
from inference.client import InferenceError, InferenceUnavailable
from inference.intake import Inspection, IntakeError, inspect_source
from inference.store import ModelStore
from serverparams.server import ServerError, get_managed_server

log = logging.getLogger(__name__)


class AddModelError(ValueError):
    """The model cannot be added as asked; ``errors`` by field ("source", "uri")."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = errors


class RemoveModelError(ValueError):
    """The model cannot be removed; the message says why (and which job or column holds it)."""


def inspect(source: str) -> Inspection:
    """Inspect ``source``; AddModelError when it cannot be read at all."""
    try:
        return inspect_source(source)
    except IntakeError as exc:
        raise AddModelError({"source": str(exc)}) from None


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
    source: str, uri: str, user: service.User, *, precision: str = "fp32"
) -> tuple[Inspection, Deployment]:
    """Inspect ``source`` again, add it to the catalog as ``uri`` and start its deployment."""
    inspection = inspect(source)
    errors: dict[str, str] = {}
    if not inspection.ok:
        errors["source"] = "; ".join(map(str, inspection.refusals))
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
