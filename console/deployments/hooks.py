"""Enabling AZURE_LOCAL_AI in the Server parameters blade deploys a model; disabling it
unloads the deployed models. Registered with serverparams' hook registry at app start."""

from __future__ import annotations

from typing import Any

import psycopg
from django.http import HttpRequest
from django.urls import reverse

from console.databases import managed_databases
from console.deployments import queries, service
from console.deployments.models import Deployment
from console.overview import RENDER_TIMEOUT_S
from inference import catalog as model_catalog
from inference.store import PRECISIONS
from serverparams import hooks
from serverparams.server import ServerError, get_managed_server

EXTENSION = "azure_local_ai"

THIRD_PARTY_NOTICE = (
    "These are third-party open-source models, governed by their own licenses. Deploying one "
    "means you accept its license; read it before you deploy."
)


def databases_with_extension(extension: str = EXTENSION) -> list[str]:
    """Databases of the managed server that have ``extension`` installed."""
    server = get_managed_server()
    found = []
    for name in managed_databases():
        try:
            with server.connect(name, connect_timeout=RENDER_TIMEOUT_S) as conn:
                if conn.execute(
                    "SELECT 1 FROM pg_extension WHERE extname = %s", [extension]
                ).fetchone():
                    found.append(name)
        except (ServerError, psycopg.Error):
            continue
    return found


class LocalAIHook:
    extension = EXTENSION
    enable_template = "deployments/_enable_section.html"
    disable_template = "deployments/_disable_section.html"

    def _choice(self, request: HttpRequest) -> tuple[str, str, str]:
        data = request.POST
        model = data.get("deploy_model") or service.default_model()
        return model, data.get("deploy_source", "").strip(), data.get("deploy_precision") or "fp32"

    def enable_context(self, request: HttpRequest) -> dict[str, Any]:
        model, source, precision = self._choice(request)
        entries = model_catalog.catalog().entries
        return {
            "model": model,
            "default": service.default_model(),
            "entry": model_catalog.catalog().find(model),
            "entries": entries,
            "source": source,
            "precision": precision,
            "precisions": PRECISIONS,
            "notice": THIRD_PARTY_NOTICE,
        }

    def disable_context(self, request: HttpRequest) -> dict[str, Any]:
        try:
            databases: list[str] | None = databases_with_extension()
            problem = ""
        except (ServerError, psycopg.Error) as exc:
            databases, problem = None, str(exc).strip()
        return {"databases": databases, "problem": problem, "models": queries.deployed_models()}

    def check_enable(self, request: HttpRequest) -> dict[str, str]:
        model, source, precision = self._choice(request)
        return {
            f"deploy_{k}": v for k, v in service.check_request(model, source, precision).items()
        }

    def enable(self, request: HttpRequest) -> hooks.Outcome:
        model, source, precision = self._choice(request)
        try:
            deployment = service.start(model, request.user, source=source, precision=precision)
        except service.DeploymentError as exc:
            return hooks.Outcome(f"{EXTENSION.upper()} was not enabled: {exc}", ok=False)
        return hooks.Outcome(
            f"Deploying {model}: {EXTENSION.upper()} joins azure.extensions when the model is "
            "ready.",
            url=reverse("deployments:detail", args=[deployment.pk]),
            link_text="Follow the deployment",
        )

    def disable(self, request: HttpRequest) -> hooks.Outcome:
        started = []
        problems = []
        for model in queries.deployed_models():
            try:
                started.append(service.start(model, request.user, action=Deployment.Action.DISABLE))
            except service.DeploymentError as exc:
                problems.append(str(exc))
        if problems:
            return hooks.Outcome(
                f"{EXTENSION.upper()} is off the allowlist, but not every model was unloaded: "
                + "; ".join(problems),
                url=reverse("deployments:list"),
                link_text="Deployments",
                ok=False,
            )
        if not started:
            return hooks.Outcome(
                f"{EXTENSION.upper()} is off the allowlist; no model was deployed."
            )
        models = ", ".join(d.model_uri for d in started)
        return hooks.Outcome(
            f"{EXTENSION.upper()} is off the allowlist; unloading {models}.",
            url=reverse("deployments:list"),
            link_text="Deployments",
        )

    def status(self) -> hooks.ChoiceStatus | None:
        active = queries.active().filter(action=Deployment.Action.ENABLE).first()
        if active is not None:
            return hooks.ChoiceStatus(
                text=f"deploying {active.model_uri} ({queries.current_step(active)})",
                url=reverse("deployments:detail", args=[active.pk]),
                busy=True,
            )
        latest = Deployment.objects.filter(action=Deployment.Action.ENABLE).first()
        if latest is not None and latest.state == Deployment.State.FAILED:
            return hooks.ChoiceStatus(
                text=f"the deployment of {latest.model_uri} failed",
                url=reverse("deployments:detail", args=[latest.pk]),
            )
        deployed = queries.deployed_models()
        if deployed:
            return hooks.ChoiceStatus(
                text=f"model{'s' if len(deployed) > 1 else ''}: {', '.join(deployed)}",
                url=reverse("deployments:models"),
            )
        return None


hooks.register(LocalAIHook())
