"""Deployments (list, detail with live progress, cancel, retry) and the models and licenses
pages (catalog, store, deploy and disable)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from console.deployments import adding, models_info, queries, service
from console.deployments.models import MANAGE_DEPLOYMENTS, Deployment
from console.deployments.steps import STEPS_BY_ACTION, TITLES
from inference import catalog as model_catalog
from inference.store import PRECISIONS

LIST_ROWS = 50


def _can_manage(request: HttpRequest) -> bool:
    return request.user.has_perm(MANAGE_DEPLOYMENTS)


def _steps(deployment: Deployment) -> list[dict[str, Any]]:
    described = {step.name: step.does for step in STEPS_BY_ACTION[deployment.action]}
    return [
        {"row": step, "title": TITLES.get(step.name, step.name), "does": described.get(step.name)}
        for step in deployment.steps.all()
    ]


@require_GET
def deployment_list(request: HttpRequest) -> HttpResponse:
    deployments = list(Deployment.objects.select_related("requested_by")[:LIST_ROWS])
    rows = [(d, queries.current_step(d) if d.is_active else "") for d in deployments]
    context = {
        "rows": rows,
        "polling": any(d.is_active for d in deployments),
        "can_manage": _can_manage(request),
    }
    if request.htmx and request.htmx.target == "deployment-table":
        return render(request, "deployments/_list_table.html", context)
    return render(request, "deployments/list.html", context)


@require_GET
def deployment_detail(request: HttpRequest, pk: int) -> HttpResponse:
    deployment = get_object_or_404(Deployment, pk=pk)
    context = {
        "deployment": deployment,
        "steps": _steps(deployment),
        "entry": model_catalog.catalog().find(deployment.model_uri),
        "can_manage": _can_manage(request),
    }
    if request.htmx and request.htmx.target == "deployment-body":
        return render(request, "deployments/_detail_body.html", context)
    return render(request, "deployments/detail.html", context)


@require_POST
@permission_required(MANAGE_DEPLOYMENTS, raise_exception=True)
def deployment_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    deployment = get_object_or_404(Deployment, pk=pk)
    service.cancel(deployment)
    return redirect("deployments:detail", pk=pk)


@require_POST
@permission_required(MANAGE_DEPLOYMENTS, raise_exception=True)
def deployment_retry(request: HttpRequest, pk: int) -> HttpResponse:
    deployment = get_object_or_404(Deployment, pk=pk)
    try:
        again = service.retry(deployment, request.user)
    except service.DeploymentError as exc:
        context = {
            "deployment": deployment,
            "steps": _steps(deployment),
            "entry": model_catalog.catalog().find(deployment.model_uri),
            "can_manage": True,
            "action_error": str(exc),
        }
        return render(request, "deployments/detail.html", context, status=409)
    return redirect("deployments:detail", pk=again.pk)


# -- models and licenses ----------------------------------------------------------------------


@require_GET
def model_list(request: HttpRequest) -> HttpResponse:
    context = {"models": models_info.all_models(), "can_manage": _can_manage(request)}
    return render(request, "deployments/models.html", context)


@require_http_methods(["GET", "POST"])
@permission_required(MANAGE_DEPLOYMENTS, raise_exception=True)
def model_add(request: HttpRequest) -> HttpResponse:
    """Add a model: inspect a source (nothing downloaded but its small files), show what was
    found, then add it to the catalog and deploy it on confirmation."""
    source = request.POST.get("source", "").strip()
    uri = request.POST.get("uri", "").strip()
    precision = request.POST.get("precision", "fp32")
    context: dict[str, Any] = {"source": source, "uri": uri, "precision": precision}
    context["precisions"] = PRECISIONS
    if request.method == "GET":
        return render(request, "deployments/add.html", context)
    try:
        if request.POST.get("action") != "add":
            inspection = adding.inspect(source)
            context.update(
                inspection=inspection,
                facts=adding.facts(inspection),
                uri=uri or inspection.proposed_uri,
                precisions=adding.precisions_for(inspection),
            )
            return render(request, "deployments/add.html", context)
        _, deployment = adding.add_model(source, uri, request.user, precision=precision)
    except adding.AddModelError as exc:
        context["errors"] = exc.errors
        if "source" not in exc.errors:
            inspection = adding.inspect(source)
            context.update(
                inspection=inspection,
                facts=adding.facts(inspection),
                precisions=adding.precisions_for(inspection),
            )
        return render(request, "deployments/add.html", context, status=422)
    except service.DeploymentError as exc:
        context["errors"] = {"deployment": str(exc)}
        return render(request, "deployments/add.html", context, status=422)
    return redirect("deployments:detail", pk=deployment.pk)


@dataclass(frozen=True)
class DeployForm:
    source: str
    precision: str
    errors: dict[str, str]


def _model_context(request: HttpRequest, uri: str, form: DeployForm | None = None) -> dict:
    info = models_info.model(uri)
    if info is None:
        raise Http404(f"no model {uri!r} in the catalog")
    return {
        "model": info,
        "can_manage": _can_manage(request),
        "precisions": info.offered_precisions,
        "form": form or DeployForm(source="", precision=info.precision_wanted, errors={}),
    }


@require_POST
@permission_required(MANAGE_DEPLOYMENTS, raise_exception=True)
def model_remove(request: HttpRequest, uri: str) -> HttpResponse:
    try:
        adding.remove_model(uri)
    except adding.RemoveModelError as exc:
        form = DeployForm(source="", precision="fp32", errors={"remove": str(exc)})
        return render(
            request, "deployments/model.html", _model_context(request, uri, form), status=409
        )
    done = f"{uri} was removed: it was unloaded, its files were deleted and it left the catalog."
    messages.success(request, done)
    return redirect("deployments:models")


@require_GET
def model_detail(request: HttpRequest, uri: str) -> HttpResponse:
    return render(request, "deployments/model.html", _model_context(request, uri))


@require_POST
@permission_required(MANAGE_DEPLOYMENTS, raise_exception=True)
def model_deploy(request: HttpRequest, uri: str) -> HttpResponse:
    source = request.POST.get("source", "").strip()
    precision = request.POST.get("precision", "fp32")
    errors = service.check_request(uri, source, precision)
    if not errors:
        try:
            deployment = service.start(uri, request.user, source=source, precision=precision)
        except service.DeploymentError as exc:
            errors = {"model": str(exc)}
        else:
            return redirect("deployments:detail", pk=deployment.pk)
    form = DeployForm(source=source, precision=precision, errors=errors)
    return render(request, "deployments/model.html", _model_context(request, uri, form), status=422)


@require_POST
@permission_required(MANAGE_DEPLOYMENTS, raise_exception=True)
def model_disable(request: HttpRequest, uri: str) -> HttpResponse:
    try:
        deployment = service.start(uri, request.user, action=Deployment.Action.DISABLE)
    except service.DeploymentError as exc:
        form = DeployForm(source="", precision="fp32", errors={"model": str(exc)})
        return render(
            request, "deployments/model.html", _model_context(request, uri, form), status=409
        )
    return redirect(reverse("deployments:detail", args=[deployment.pk]))
