"""The portal shell's own pages: overview and the blades still to come."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from console.navigation import COMING_SOON
from console.overview import machine_overview, server_overview, sidecar_overview


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
def coming_soon(request: HttpRequest, section: str) -> HttpResponse:
    title = COMING_SOON.get(section)
    if title is None:
        raise Http404(f"No section {section!r}")
    return render(request, "console/coming_soon.html", {"title": title, "section": section})


@require_GET
def notifications(request: HttpRequest) -> HttpResponse:
    """The bell's content (the context processor fills it), for htmx to refresh in place."""
    return render(request, "console/_bell.html")
