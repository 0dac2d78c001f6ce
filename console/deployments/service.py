"""Starting, cancelling and retrying deployments: what the views, the blade's hook and the
``deploy`` command call. The work itself runs on a worker (``pipeline.py``)."""

from __future__ import annotations

import logging
from pathlib import Path

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from console.deployments import dispatch
from console.deployments.models import Deployment, DeploymentStep
from console.deployments.steps import STEPS_BY_ACTION
from inference import catalog as model_catalog
from inference.catalog import CatalogError
from inference.store import PRECISIONS

log = logging.getLogger(__name__)

User = AbstractBaseUser | AnonymousUser


class DeploymentError(ValueError):
    """A deployment cannot be started as asked; the message says why and what to do."""


class DeploymentConflict(DeploymentError):
    def __init__(self, active: Deployment) -> None:
        super().__init__(
            f"{active.model_uri} already has an active deployment (#{active.pk}, "
            f"{active.get_state_display().lower()}); wait for it or cancel it first"
        )
        self.active = active


def default_model() -> str:
    """The model enabling the extension deploys: DEFAULT_MODEL, else the catalog's default."""
    return model_catalog.default_uri()


def check_request(model_uri: str, source: str, precision: str) -> dict[str, str]:
    """Errors in a deployment request, by field (empty: it can be started)."""
    errors: dict[str, str] = {}
    try:
        entry = model_catalog.catalog().get(model_uri)
    except CatalogError as exc:
        return {"model": str(exc)}
    if precision not in PRECISIONS:
        errors["precision"] = f"precision must be one of {', '.join(PRECISIONS)}"
    elif precision == "int8" and not entry.offers_int8:
        errors["precision"] = (
            f"{model_uri}'s catalog entry gives no int8 quality thresholds, so no int8 variant "
            "is offered for it: deploy it at fp32"
        )
    if source and source not in entry.sources:
        path = Path(source)
        if source == "local" or not path.is_absolute():
            errors["source"] = (
                f"the source must be one of {', '.join(s for s in entry.sources if s != 'local')}"
                " or the absolute path of a folder laid out like the model's Hugging Face "
                "repository"
            )
        elif not path.is_dir():
            errors["source"] = f"{source} is not a folder on the worker's machine"
    active = _active(model_uri)
    if active is not None:
        errors["model"] = str(DeploymentConflict(active))
    return errors


def _active(model_uri: str) -> Deployment | None:
    return Deployment.objects.filter(
        model_uri=model_uri, state__in=Deployment.ACTIVE_STATES
    ).first()


def start(
    model_uri: str,
    user: User,
    *,
    action: str = Deployment.Action.ENABLE,
    source: str = "",
    precision: str = "fp32",
    retry_of: Deployment | None = None,
) -> Deployment:
    """Create the deployment and its steps, and send it to a worker once committed."""
    active = _active(model_uri)
    if active is not None:
        raise DeploymentConflict(active)
    if action == Deployment.Action.ENABLE:
        errors = check_request(model_uri, source, precision)
        if errors:
            raise DeploymentError("; ".join(errors.values()))
    authenticated = bool(getattr(user, "is_authenticated", False))
    try:
        with transaction.atomic():
            deployment = Deployment.objects.create(
                action=action,
                model_uri=model_uri,
                source=source,
                precision=precision,
                requested_by=user if authenticated else None,
                requested_by_name=user.get_username() or "system",
                retry_of=retry_of,
            )
            DeploymentStep.objects.bulk_create(
                DeploymentStep(deployment=deployment, name=step.name, position=index)
                for index, step in enumerate(STEPS_BY_ACTION[action])
            )
    except IntegrityError:
        active = _active(model_uri)
        if active is None:
            raise
        raise DeploymentConflict(active) from None
    transaction.on_commit(lambda: enqueue(deployment.pk))
    return deployment


def enqueue(deployment_id: int) -> None:
    """Send the deployment to a worker. A broker that cannot be reached leaves the row queued:
    the next worker to start picks it up."""
    try:
        dispatch.run_deployment(deployment_id)
    except Exception as exc:  # kombu raises several types for an unreachable broker
        log.warning("deployment %s stays queued: the broker refused it (%s)", deployment_id, exc)
        return
    Deployment.objects.filter(pk=deployment_id).update(sent_at=timezone.now())


def cancel(deployment: Deployment) -> bool:
    """Ask a deployment to stop. A queued one stops at once; a running one at its next step
    boundary (the worker cleans up what it half-wrote). False if it had already finished."""
    now = timezone.now()
    if Deployment.objects.filter(pk=deployment.pk, state=Deployment.State.QUEUED).update(
        state=Deployment.State.CANCELLED,
        cancel_requested=True,
        finished_at=now,
        error="cancelled before a worker took it",
    ):
        deployment.steps.filter(state=DeploymentStep.State.PENDING).update(
            state=DeploymentStep.State.CANCELLED
        )
        return True
    return bool(
        Deployment.objects.filter(pk=deployment.pk, state=Deployment.State.RUNNING).update(
            cancel_requested=True
        )
    )


def retry(deployment: Deployment, user: User) -> Deployment:
    """A new deployment with the same request; the steps that already hold are skipped."""
    if not deployment.is_terminal:
        raise DeploymentError(f"deployment #{deployment.pk} is still {deployment.state}")
    return start(
        deployment.model_uri,
        user,
        action=deployment.action,
        source=deployment.source,
        precision=deployment.precision,
        retry_of=deployment,
    )
