"""What the pages and the hook read about deployments and deployed models."""

from __future__ import annotations

from django.db.models import QuerySet

from console.deployments.models import Deployment


def active() -> QuerySet[Deployment]:
    return Deployment.objects.filter(state__in=Deployment.ACTIVE_STATES)


def latest_by_model() -> dict[str, Deployment]:
    """The newest deployment of each model URI."""
    latest: dict[str, Deployment] = {}
    for deployment in Deployment.objects.order_by("-created_at", "-id"):
        latest.setdefault(deployment.model_uri, deployment)
    return latest


def deployed_models() -> list[str]:
    """Models whose newest finished request enabled them successfully."""
    deployed = []
    finished = Deployment.objects.filter(state__in=(Deployment.State.SUCCEEDED,)).order_by(
        "-finished_at", "-id"
    )
    seen: set[str] = set()
    for deployment in finished:
        if deployment.model_uri in seen:
            continue
        seen.add(deployment.model_uri)
        if deployment.action == Deployment.Action.ENABLE:
            deployed.append(deployment.model_uri)
    return sorted(deployed)


def current_step(deployment: Deployment) -> str:
    """A short description of where a deployment is: "fetch 40%"."""
    step = deployment.steps.filter(state="running").first()
    if step is None:
        return deployment.get_state_display().lower()
    percent = f" {step.percent}%" if step.percent is not None else ""
    from console.deployments.steps import TITLES

    return f"{TITLES.get(step.name, step.name).lower()}{percent}"
