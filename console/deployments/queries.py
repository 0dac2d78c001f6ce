"""What the pages and the hook read about deployments and deployed models."""

from __future__ import annotations

from django.db.models import Max, QuerySet

from console.deployments.models import Deployment
from console.deployments.steps import TITLES


def active() -> QuerySet[Deployment]:
    return Deployment.objects.filter(state__in=Deployment.ACTIVE_STATES)


def _newest(rows: QuerySet[Deployment]) -> QuerySet[Deployment]:
    """The newest of ``rows`` for each model URI (ids grow with time), in one query."""
    newest = rows.values("model_uri").annotate(newest=Max("id")).values("newest")
    return Deployment.objects.filter(pk__in=newest)


def latest_by_model() -> dict[str, Deployment]:
    """The newest deployment of each model URI."""
    return {d.model_uri: d for d in _newest(Deployment.objects.all())}


def deployed_models() -> list[str]:
    """Models whose newest successful request enabled them."""
    succeeded = _newest(Deployment.objects.filter(state=Deployment.State.SUCCEEDED))
    return sorted(d.model_uri for d in succeeded if d.action == Deployment.Action.ENABLE)


def current_step(deployment: Deployment) -> str:
    """A short description of where a deployment is: "fetch 40%"."""
    step = deployment.steps.filter(state="running").first()
    if step is None:
        return deployment.get_state_display().lower()
    percent = f" {step.percent}%" if step.percent is not None else ""
    return f"{TITLES.get(step.name, step.name).lower()}{percent}"
