"""The portal shell's own pages: the overview, the bell, and the sign-in lockout."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from console.overview import machine_overview, server_overview, sidecar_overview
from console.search import search as find


@require_GET
def overview(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "console/overview.html",
        {
            "server": server_overview(),
            "sidecar": sidecar_overview(),
            "machine": machine_overview(),
        },
    )


@require_GET
def notifications(request: HttpRequest) -> HttpResponse:
    """The bell's content (the context processor fills it), for htmx to refresh in place."""
    return render(request, "console/_bell.html")


@require_GET
def search(request: HttpRequest) -> HttpResponse:
    """The top bar's search results, as a listbox fragment (an empty one for no query)."""
    query = request.GET.get("q", "")
    context = {"groups": find(query), "q": query.strip()}
    return render(request, "console/_search_results.html", context)


def locked_out(
    request: HttpRequest,
    response: HttpResponse | None = None,
    credentials: dict[str, object] | None = None,
) -> HttpResponse:
    """The sign-in page saying why it refuses, for django-axes (AXES_LOCKOUT_CALLABLE) to
    answer with once a user name has failed too often from one address."""
    username = request.POST.get("username", "")
    context = {
        "form": AuthenticationForm(request, initial={"username": username}),
        "next": request.POST.get("next", ""),
        "locked_out_minutes": int(settings.AXES_COOLOFF_TIME.total_seconds() // 60),
    }
    return render(request, "registration/login.html", context, status=429)
