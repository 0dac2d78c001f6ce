"""The playground (its Embed and Rerank tabs) and its semantic search demo.

Every form works without JavaScript (the full page comes back); with htmx the answer is the
section's fragment, the same template the page includes. Reading the sidecar's models and the
demo's state uses the page-render timeout; embedding, ranking and the demo's SQL may take
longer.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from console.deployments.models import MANAGE_DEPLOYMENTS
from console.playground import demo, embedding, rerank
from console.playground.forms import EmbedForm, RerankForm, SearchForm, SetupForm

TABS = {"embed": "Embed", "rerank": "Rerank"}


def _can_set_up(request: HttpRequest) -> bool:
    """Creating the sample table writes to the managed server: admins only."""
    return request.user.has_perm(MANAGE_DEPLOYMENTS)


def _context(
    request: HttpRequest, deployed: embedding.Deployed, tab: str = "embed", **parts: Any
) -> dict[str, Any]:
    """The page's context; ``parts`` replace the defaults of the sections a request changed."""
    # The sidecar's default reranker is asked for only where a reranker could be chosen.
    default_reranker = embedding.default_reranker() if deployed.rerankers else ""
    context: dict[str, Any] = {
        "tab": tab,
        "playground_tabs": list(TABS.items()),
        "deployed": deployed,
        "default_reranker": default_reranker,
        "form": EmbedForm(models=deployed.embedders),
        "limits": {"texts": embedding.MAX_TEXTS, "chars": f"{embedding.MAX_CHARS:,}"},
        "rerank_limits": {"documents": rerank.MAX_DOCUMENTS, "chars": f"{rerank.MAX_CHARS:,}"},
        "samples": demo.samples(),
        "setup_form": SetupForm(models=deployed.embedders),
        "search_form": SearchForm(),
        "default_k": demo.DEFAULT_K,
        "can_set_up": _can_set_up(request),
        "batch_size": demo.BATCH_SIZE,
        "rerank_top": demo.RERANK_TOP,
        "candidates": demo.CANDIDATES,
        "rrf_k": demo.RRF_K,
    }
    if tab == "rerank" and "rerank_form" not in parts:
        context["rerank_form"] = RerankForm.sample(deployed.rerankers, default_reranker)
    context.update(parts)
    if "demo" not in context:
        context["demo"] = demo.status()
    return context


def _answer(
    request: HttpRequest, fragment: str, context: dict[str, Any], status: int = 200
) -> HttpResponse:
    template = fragment if request.htmx else "playground/page.html"
    return render(request, template, context, status=status)


@require_GET
def playground(request: HttpRequest) -> HttpResponse:
    tab = request.GET.get("tab", "embed")
    context = _context(request, embedding.deployed_models(), tab if tab in TABS else "embed")
    return render(request, "playground/page.html", context)


@require_POST
def embed(request: HttpRequest) -> HttpResponse:
    # One client (one connection) for the model list and the embeddings.
    with embedding.sidecar_client(embedding.EMBED_TIMEOUT_S) as client:
        deployed = embedding.deployed_models(client)
        form = EmbedForm(request.POST, models=deployed.embedders)
        parts: dict[str, Any] = {"form": form}
        if deployed.problem:
            status = 503
        elif not form.is_valid():
            status = 422
        else:
            try:
                parts["embedding"] = embedding.embed(
                    client,
                    form.chosen_model(),
                    form.cleaned_data["texts"],
                    form.cleaned_data["input_type"],
                )
                status = 200
            except embedding.EmbedError as exc:
                parts["embed_error"], status = str(exc), exc.status
    if request.htmx:
        parts["demo"] = None  # the fragment does not show it: spare the server a visit
    return _answer(request, "playground/_embed.html", _context(request, deployed, **parts), status)


@require_POST
def rank(request: HttpRequest) -> HttpResponse:
    """The Rerank tab's form: the documents ranked in SQL, or the sample loaded."""
    deployed = embedding.deployed_models()
    parts: dict[str, Any] = {}
    status = 200
    if "sample" in request.POST:
        parts["rerank_form"] = RerankForm.sample(deployed.rerankers, request.POST.get("model", ""))
    else:
        form = RerankForm(request.POST, models=deployed.rerankers)
        parts["rerank_form"] = form
        if deployed.problem:
            status = 503
        elif not form.is_valid():
            status = 422
        else:
            try:
                parts["ranking"] = rerank.rank(
                    form.cleaned_data["model"],
                    form.cleaned_data["query"],
                    form.cleaned_data["documents"],
                )
            except rerank.RerankError as exc:
                parts["rerank_error"], status = exc, exc.status
    if request.htmx:
        parts["demo"] = None  # the fragment does not show it: spare the server a visit
    context = _context(request, deployed, "rerank", **parts)
    return _answer(request, "playground/_rerank.html", context, status)


@require_POST
@permission_required(MANAGE_DEPLOYMENTS, raise_exception=True)
def demo_setup(request: HttpRequest) -> HttpResponse:
    deployed = embedding.deployed_models()
    form = SetupForm(request.POST, models=deployed.embedders)
    parts: dict[str, Any] = {"setup_form": form}
    status = 200
    if deployed.problem or not form.is_valid():
        status = 503 if deployed.problem else 422
    else:
        try:
            parts["setup_outcome"] = demo.setup(form.chosen_model())
        except demo.DemoError as exc:
            parts["setup_error"], status = exc, exc.status
    return _answer(request, "playground/_demo.html", _context(request, deployed, **parts), status)


@require_GET
def demo_search(request: HttpRequest) -> HttpResponse:
    hybrid = request.GET.get("mode") == "hybrid"
    # The sidecar is asked only where its rerankers matter: hybrid mode, or the whole page.
    deployed = embedding.deployed_models() if hybrid or not request.htmx else None
    form = SearchForm(request.GET, rerankers=deployed.rerankers if deployed else [])
    parts: dict[str, Any] = {"search_form": form}
    status = 200
    if hybrid and deployed is not None and deployed.problem:
        parts["search_error"] = demo.DemoError(
            "The inference sidecar cannot be reached, so its rerankers are unknown now: "
            f"{deployed.problem}",
            status=503,
        )
        status = 503
    elif not form.is_valid():
        status = 422
    else:
        try:
            if form.cleaned_data["mode"] == "hybrid":
                parts["hybrid"] = demo.hybrid_search(
                    form.cleaned_data["q"], form.cleaned_data["reranker"]
                )
            else:
                parts["search"] = demo.search(form.cleaned_data["q"], form.cleaned_data["k"])
        except demo.DemoError as exc:
            parts["search_error"], status = exc, exc.status
    if request.htmx:
        return render(request, "playground/_search.html", parts, status=status)
    assert deployed is not None
    return render(
        request, "playground/page.html", _context(request, deployed, **parts), status=status
    )
