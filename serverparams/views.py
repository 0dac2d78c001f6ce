"""The Server parameters blade: list, filter, save, reset, restart, history."""

from __future__ import annotations

import json
from dataclasses import dataclass

import psycopg
from django.core.exceptions import PermissionDenied
from django.core.paginator import Page, Paginator
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from serverparams import hooks, policy
from serverparams.apply import (
    Restart,
    SaveResult,
    reset_all_edits,
    restart_instructions,
    restart_pending,
    save_changes,
)
from serverparams.catalog import Catalog, Parameter, checklist, read_catalog
from serverparams.models import EDIT_PARAMETERS, ParameterChange
from serverparams.server import ServerError, get_managed_server
from serverparams.validation import Edit, check_edits

TABS: dict[str, str] = {
    "all": "All",
    "modified": "Modified",
    "static": "Static",
    "dynamic": "Dynamic",
    "readonly": "Read-only",
}
_TAB_FILTERS = {
    "all": lambda p: True,
    "modified": lambda p: p.is_modified,
    "static": lambda p: p.parameter_type == policy.STATIC,
    "dynamic": lambda p: p.parameter_type == policy.DYNAMIC,
    "readonly": lambda p: p.parameter_type == policy.READ_ONLY,
}
HISTORY_ROWS = 20


@dataclass(frozen=True)
class BladeState:
    """What the user is looking at: tab, search text, page."""

    tab: str
    query: str
    page: int

    @classmethod
    def from_request(cls, data: QueryDict) -> BladeState:
        tab = data.get("tab") or "all"
        try:
            page = max(1, int(data.get("page") or 1))
        except ValueError:
            page = 1
        query = (data.get("q") or "").strip()[:200]
        return cls(tab=tab if tab in TABS else "all", query=query, page=page)


def _read() -> Catalog:
    with get_managed_server().connect() as conn:
        return read_catalog(conn)


def _results_context(
    catalog: Catalog, state: BladeState, *, errors: dict[str, str] | None = None
) -> dict[str, object]:
    searched = [p for p in catalog.parameters if p.matches(state.query)]
    counts = {tab: sum(1 for p in searched if keep(p)) for tab, keep in _TAB_FILTERS.items()}
    rows = [p for p in searched if _TAB_FILTERS[state.tab](p)]
    page: Page[Parameter] = Paginator(rows, policy.PAGE_SIZE).get_page(state.page)
    errors = errors or {}
    statuses = hooks.statuses() if any(p.data_type == policy.SET for p in page.object_list) else {}
    row_items = [
        {
            "parameter": p,
            "error": errors.get(p.name),
            "choices": checklist(p, catalog.extensions, statuses),
        }
        for p in page.object_list
    ]
    return {
        "state": state,
        "tabs": [(key, label, counts[key]) for key, label in TABS.items()],
        "page_obj": page,
        "row_items": row_items,
        "total": len(rows),
        "errors": errors,
        "pending_restart": [p for p in catalog.parameters if p.pending_restart],
    }


def _page_context(request: HttpRequest) -> dict[str, object]:
    server = get_managed_server()
    return {
        "blade_url": reverse("serverparams:blade"),
        "can_edit": request.user.has_perm(EDIT_PARAMETERS),
        "controls_process": server.controls_process,
        "restart_help": restart_instructions(controls_process=server.controls_process),
    }


def _unreachable(request: HttpRequest, exc: Exception, *, partial: bool) -> HttpResponse:
    context = {"problem": str(exc).strip(), **_page_context(request)}
    template = "serverparams/_unreachable.html" if partial else "serverparams/blade.html"
    return render(request, template, context, status=503)


@require_GET
def blade(request: HttpRequest) -> HttpResponse:
    state = BladeState.from_request(request.GET)
    partial = bool(request.htmx and request.htmx.target == "param-results")
    try:
        catalog = _read()
    except (ServerError, psycopg.Error) as exc:
        return _unreachable(request, exc, partial=partial)
    context = {**_page_context(request), **_results_context(catalog, state)}
    if partial:
        return render(request, "serverparams/_results.html", context)
    context["history"] = ParameterChange.objects.all()[:HISTORY_ROWS]
    return render(request, "serverparams/blade.html", context)


def _edits_from(data: QueryDict) -> list[Edit]:
    """Edits posted as ``name`` (repeated), ``value:<name>`` and ``base:<name>`` fields."""
    return [
        Edit(name=name, value=data.get(f"value:{name}", ""), base=data.get(f"base:{name}"))
        for name in dict.fromkeys(data.getlist("name"))
    ]


def _require_editor(request: HttpRequest) -> None:
    if not request.user.has_perm(EDIT_PARAMETERS):
        raise PermissionDenied("Only admins may change server parameters.")


# POST fields that the confirmation dialogs carry through to the next step.
_CARRIED_PREFIXES = ("confirm_", "deploy_")


def _carried(data: QueryDict) -> list[tuple[str, str]]:
    return [(k, v) for k in data for v in data.getlist(k) if k.startswith(_CARRIED_PREFIXES)]


@require_POST
def save(request: HttpRequest) -> HttpResponse:
    _require_editor(request)
    state = BladeState.from_request(request.POST)
    edits = _edits_from(request.POST)
    try:
        restart = Restart(request.POST.get("restart", Restart.ASK.value))
    except ValueError:
        restart = Restart.ASK
    changes = hooks.hooked_changes(edits)
    if changes:
        # Values the server would refuse are reported before anything is asked or started.
        try:
            catalog = _read()
        except (ServerError, psycopg.Error) as exc:
            return _unreachable(request, exc, partial=True)
        invalid = check_edits(edits, catalog).errors
        if invalid:
            return _after_save(request, SaveResult(catalog=catalog, errors=invalid), state)
        confirmed = request.POST.get("confirm_extensions") == "1"
        errors: dict[str, str] = {}
        if confirmed:
            for change in changes:
                if change.enable:
                    errors.update(change.hook.check_enable(request))
        if not confirmed or errors:
            return _extension_dialog(request, edits, changes, errors)
    to_save = hooks.without_enabled(edits, changes)
    try:
        if to_save:
            result = save_changes(to_save, request.user, restart=restart)
        else:
            result = SaveResult(catalog=_read())
    except (ServerError, psycopg.Error) as exc:
        return _unreachable(request, exc, partial=True)
    if result.needs_decision:
        context = {
            **_page_context(request),
            "edits": edits,
            "static": result.static_changes,
            "carried": _carried(request.POST),
        }
        return _to_dialog(render(request, "serverparams/_restart_dialog.html", context))
    outcomes = []
    if result.ok and changes:
        for change in changes:
            hook = change.hook
            outcomes.append(hook.enable(request) if change.enable else hook.disable(request))
        # Read again so that the rows show the status of the work the hooks started.
        result.catalog = _read()
    handled = sorted({change.parameter for change in changes}) if result.ok else []
    return _after_save(request, result, state, outcomes=outcomes, handled=handled)


def _to_dialog(response: HttpResponse) -> HttpResponse:
    response["HX-Retarget"] = "#dialog-host"
    response["HX-Reswap"] = "innerHTML"
    return response


def _extension_dialog(
    request: HttpRequest,
    edits: list[Edit],
    changes: list[hooks.HookedChange],
    errors: dict[str, str],
) -> HttpResponse:
    """The confirmation that enabling or disabling a hooked extension asks for; nothing has
    been applied yet."""
    sections = [
        {"template": change.template, "context": change.context(request), "enable": change.enable}
        for change in changes
    ]
    context = {
        **_page_context(request),
        "edits": edits,
        "sections": sections,
        "errors": errors,
        "restart": request.POST.get("restart", ""),
    }
    return _to_dialog(render(request, "serverparams/_extension_dialog.html", context))


def _after_save(
    request: HttpRequest,
    result: SaveResult,
    state: BladeState,
    *,
    outcomes: list[hooks.Outcome] | None = None,
    handled: list[str] | None = None,
) -> HttpResponse:
    errors = {**result.errors, **result.failed}
    context = {
        **_page_context(request),
        **_results_context(result.catalog, state, errors=errors),
        "result": result,
        "outcomes": outcomes or [],
        "history": ParameterChange.objects.all()[:HISTORY_ROWS],
        "oob": True,
    }
    status = 422 if errors else 200
    response = render(request, "serverparams/_results.html", context, status=status)
    # Tells the page which pending edits are now saved or handed over (the rest stay pending).
    applied = sorted({*result.applied, *(handled or [])})
    response["HX-Trigger"] = json.dumps({"parametersSaved": {"applied": applied}})
    return response


@require_GET
def reset_all_dialog(request: HttpRequest) -> HttpResponse:
    _require_editor(request)
    try:
        catalog = _read()
    except (ServerError, psycopg.Error) as exc:
        return _unreachable(request, exc, partial=True)
    edits = reset_all_edits(catalog)
    by_name = catalog.by_name()
    static = [edit.name for edit in edits if by_name[edit.name.lower()].is_static]
    rows = [(edit, by_name[edit.name.lower()]) for edit in edits]
    return render(
        request,
        "serverparams/_reset_all_dialog.html",
        {**_page_context(request), "edits": edits, "rows": rows, "static": static},
    )


@require_POST
def restart_server(request: HttpRequest) -> HttpResponse:
    _require_editor(request)
    state = BladeState.from_request(request.POST)
    result = SaveResult(catalog=Catalog(parameters=[], extensions=[]))
    try:
        with get_managed_server().connect() as conn:
            result.catalog = read_catalog(conn)
        result.pending_restart = [p.name for p in result.catalog.parameters if p.pending_restart]
        restart_pending(result)
    except (ServerError, psycopg.Error) as exc:
        return _unreachable(request, exc, partial=True)
    return _after_save(request, result, state)


@require_GET
def history(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "serverparams/_history.html",
        {"history": ParameterChange.objects.all()[:HISTORY_ROWS]},
    )
