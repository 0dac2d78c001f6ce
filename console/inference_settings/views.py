"""The inference settings form: the sidecar's settings, read and changed live."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from console.inference_settings import service
from console.inference_settings.forms import SettingsForm
from console.inference_settings.models import CHANGE_SETTINGS, SettingChange
from inference.client import InferenceError, InferenceUnavailable

HISTORY_ROWS = 20


def _render(
    request: HttpRequest,
    context: dict[str, object],
    *,
    status: int = 200,
) -> HttpResponse:
    """The whole page, or for htmx the fragment the page is made of."""
    context = {
        "form_url": reverse("inference_settings:form"),
        "inference_url": settings.INFERENCE_URL,
        "can_change": request.user.has_perm(CHANGE_SETTINGS),
        "history": SettingChange.objects.all()[:HISTORY_ROWS],
        **context,
    }
    template = "inference_settings/_body.html" if request.htmx else "inference_settings/form.html"
    return render(request, template, context, status=status)


def _unreachable(request: HttpRequest, exc: InferenceError, *, saving: bool) -> HttpResponse:
    problem = str(exc).strip().rstrip(".")
    context = {
        "problem_parts": problem.split("`"),
        "unavailable": isinstance(exc, InferenceUnavailable),
        "saving": saving,
    }
    return _render(request, context, status=503)


@require_http_methods(["GET", "POST"])
def settings_form(request: HttpRequest) -> HttpResponse:
    saving = request.method == "POST"
    if saving and not request.user.has_perm(CHANGE_SETTINGS):
        raise PermissionDenied(
            "Only settings managers and admins may change the inference settings."
        )
    try:
        snapshot = service.read()
    except InferenceError as exc:
        return _unreachable(request, exc, saving=saving)
    if not saving:
        read_only = not request.user.has_perm(CHANGE_SETTINGS)
        return _render(
            request,
            {"form": SettingsForm(snapshot, read_only=read_only), "layout": snapshot.layout},
        )

    form = SettingsForm(snapshot, request.POST)
    if not form.is_valid():
        return _render(request, {"form": form, "layout": snapshot.layout}, status=422)
    try:
        result = service.save(form.changes(), form.seen(), snapshot.values, request.user)
    except InferenceUnavailable as exc:
        return _unreachable(request, exc, saving=True)
    if result.errors or result.conflicts:
        form.refuse(result)
        return _render(request, {"form": form, "layout": snapshot.layout}, status=422)
    # The values the sidecar reports after the change, not the ones posted, and the layout
    # they give now.
    try:
        after = service.read()
    except InferenceError:
        after = service.Snapshot(specs=snapshot.specs, values=result.values, models=snapshot.models)
    saved = SettingsForm(service.Snapshot(after.specs, result.values, after.layout, after.models))
    return _render(request, {"form": saved, "result": result, "layout": after.layout})
