"""The Server parameters blade over HTTP: listing, search, tabs, save, dialogs, roles."""

from __future__ import annotations

import html
import json
import re

import pytest
from django.http import HttpResponse
from django.test import Client

from serverparams.models import ParameterChange
from serverparams.server import ManagedServer
from tests.console.servers import read_only_console_db, show

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "param-results"}
WRITES = [
    ("post", "/parameters/save/"),
    ("get", "/parameters/reset-all/"),
    ("post", "/parameters/restart/"),
    ("post", "/deployments/1/cancel/"),
    ("post", "/deployments/1/retry/"),
    ("post", "/models/tiny:v1/deploy/"),
    ("post", "/models/tiny:v1/disable/"),
    ("post", "/playground/demo/setup/"),
]
# Writes a settings manager may make too; readers may not.
SETTINGS_WRITES = [("post", "/settings/")]
# Posts that change nothing (their input is too long for a query string): anyone signed in.
READER_POSTS = ["/playground/embed/"]


def save(client: Client, fields: dict[str, object]) -> HttpResponse:
    """POST ``fields`` to the save route, as the blade's htmx request does."""
    return client.post("/parameters/save/", fields, **HTMX)


def test_blade_lists_parameters_with_search_box_and_tabs(
    server: ManagedServer, admin_client: Client
) -> None:
    page = admin_client.get("/parameters/").content.decode()
    assert 'placeholder="Search to filter items..."' in page
    for tab in ("All", "Modified", "Static", "Dynamic", "Read-only"):
        assert f">{tab} <span" in page
    assert 'data-param="allow_in_place_tablespaces"' in page  # first page, name order
    assert "Page 1 of" in page
    assert page.count('class="param-row') == 50
    assert "{#" not in page and "{%" not in page  # no template comment or tag left unrendered


def test_search_filters_on_name_and_description_server_side(
    server: ManagedServer, admin_client: Client
) -> None:
    fragment = admin_client.get("/parameters/", {"q": "extensions"}, **HTMX).content.decode()
    assert "<html" not in fragment  # an htmx partial, not the whole page
    assert 'data-param="azure.extensions"' in fragment
    assert 'data-param="work_mem"' not in fragment
    by_description = admin_client.get("/parameters/", {"q": "query workspaces"}, **HTMX)
    assert 'data-param="work_mem"' in by_description.content.decode()


@pytest.mark.parametrize(
    ("tab", "present", "absent"),
    [
        ("static", "max_connections", "work_mem"),
        ("dynamic", "work_mem", "max_connections"),
        ("readonly", "block_size", "work_mem"),
    ],
)
def test_tabs_filter_by_parameter_type(
    server: ManagedServer, admin_client: Client, tab: str, present: str, absent: str
) -> None:
    query = {"tab": tab, "q": present.split("_")[0]}
    page = admin_client.get("/parameters/", query).content.decode()
    assert f'data-param="{present}"' in page
    assert f'data-param="{absent}"' not in page


def test_readonly_tab_includes_policy_parameters(
    server: ManagedServer, admin_client: Client
) -> None:
    page = admin_client.get("/parameters/", {"tab": "readonly", "q": "port"}).content.decode()
    assert 'data-param="port"' in page
    assert 'name="value:port"' not in page and "param-editor" not in page


def test_modified_tab_shows_changed_parameters(server: ManagedServer, admin_client: Client) -> None:
    save(admin_client, {"name": "work_mem", "value:work_mem": "6MB"})
    page = admin_client.get("/parameters/", {"tab": "modified"}).content.decode()
    assert 'data-param="work_mem"' in page
    assert 'data-param="enable_seqscan"' not in page


def test_editors_match_the_data_type(server: ManagedServer, admin_client: Client) -> None:
    def row(name: str) -> str:
        page = admin_client.get("/parameters/", {"q": name}, **HTMX).content.decode()
        start = page.index(f'data-param="{name}"')
        return page[start : page.index("</tr>", start)]

    assert '<option value="on" selected>ON</option>' in row("enable_seqscan")
    assert '<option value="all">all</option>' in row("log_statement")
    assert 'inputmode="decimal"' in row("work_mem") and "64-2147483647 kB" in row("work_mem")
    assert 'type="checkbox" value="vector"' in row("azure.extensions")
    assert "AZURE_LOCAL_AI" in row("azure.extensions")


def test_extension_the_machine_cannot_host_is_disabled_with_the_reason(
    server: ManagedServer, admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inference import resources

    class TinyMachine:
        total = available = 256 * 1024 * 1024

    monkeypatch.setattr(resources.psutil, "virtual_memory", lambda: TinyMachine)
    page = admin_client.get("/parameters/", {"q": "azure.extensions"}, **HTMX).content.decode()
    start = page.index('value="azure_local_ai"')
    checkbox = page[page.rindex("<input", 0, start) : page.index(">", start)]
    assert "disabled" in checkbox
    assert "this machine has 256 MB" in page
    response = save(
        admin_client, {"name": "azure.extensions", "value:azure.extensions": "azure_local_ai"}
    )
    assert response.status_code == 422
    assert "AZURE_LOCAL_AI cannot be enabled on this machine" in response.content.decode()


def test_save_applies_and_tells_the_page_what_was_saved(
    server: ManagedServer, admin_client: Client
) -> None:
    response = save(
        admin_client,
        {
            "name": ["azure.extensions"],
            "value:azure.extensions": "VECTOR",
            "base:azure.extensions": "",
            "q": "extensions",
        },
    )
    assert response.status_code == 200
    assert json.loads(response["HX-Trigger"]) == {
        "parametersSaved": {"applied": ["azure.extensions"]}
    }
    body = response.content.decode()
    assert "Saved 1 parameter" in body and 'id="history-panel"' in body
    assert show(server, "azure.extensions") == "vector"


def test_invalid_save_returns_422_with_the_error_in_the_row(
    server: ManagedServer, admin_client: Client
) -> None:
    response = save(
        admin_client,
        {"name": "work_mem", "value:work_mem": "1", "base:work_mem": "4096", "q": "work_mem"},
    )
    assert response.status_code == 422
    body = response.content.decode()
    row = body[body.index('data-param="work_mem"') :]
    assert 'class="row-error" role="alert">must be between 64 and 2147483647 kB' in row
    assert show(server, "work_mem") == "4MB"


def test_static_save_returns_the_restart_dialog(
    server: ManagedServer, admin_client: Client
) -> None:
    response = save(
        admin_client,
        {"name": "max_connections", "value:max_connections": "150", "base:max_connections": "100"},
    )
    assert response["HX-Retarget"] == "#dialog-host"
    body = response.content.decode()
    for button in ("Save and restart", "Save only", "Cancel"):
        assert button in body
    assert 'name="value:max_connections" value="150"' in body
    assert not ParameterChange.objects.exists()
    saved = save(
        admin_client,
        {
            "name": "max_connections",
            "value:max_connections": "150",
            "base:max_connections": "100",
            "restart": "no",
            "q": "max_connections",
        },
    )
    assert saved.status_code == 200
    assert "Restart pending" in saved.content.decode()


def test_reset_all_dialog_lists_modified_parameters(
    server: ManagedServer, admin_client: Client
) -> None:
    save(admin_client, {"name": "enable_seqscan", "value:enable_seqscan": "off"})
    dialog = admin_client.get("/parameters/reset-all/").content.decode()
    assert "Reset all to default?" in dialog
    assert 'name="value:enable_seqscan" value="on"' in dialog
    assert 'name="base:enable_seqscan" value="off"' in dialog


def test_reset_all_keeps_what_initdb_wrote_and_empties_the_modified_tab(
    server: ManagedServer, admin_client: Client
) -> None:
    initdb_wrote = {name: show(server, name) for name in ("TimeZone", "lc_messages", "DateStyle")}
    save(
        admin_client,
        {
            "name": ["TimeZone", "DateStyle", "work_mem"],
            "value:TimeZone": "Asia/Tokyo",
            "value:DateStyle": "SQL, DMY",
            "value:work_mem": "6MB",
        },
    )
    dialog = admin_client.get("/parameters/reset-all/").content.decode()
    assert f'name="value:TimeZone" value="{initdb_wrote["TimeZone"]}"' in dialog
    assert "lc_messages" not in dialog  # never changed: nothing to reset
    # Submit the dialog's form as the browser does.
    fields: dict[str, list[str]] = {"restart": ["no"], "tab": ["modified"]}
    for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', dialog):
        fields.setdefault(name, []).append(html.unescape(value))
    assert sorted(fields["name"]) == ["DateStyle", "TimeZone", "work_mem"]
    response = save(admin_client, fields)
    assert response.status_code == 200
    assert {name: show(server, name) for name in initdb_wrote} == initdb_wrote
    assert show(server, "work_mem") == "4MB"
    page = admin_client.get("/parameters/", {"tab": "modified"}).content.decode()
    assert 'Modified <span class="count">(0)</span>' in page
    assert 'class="param-row' not in page


def test_a_rows_reset_goes_back_to_the_configured_default(
    server: ManagedServer, admin_client: Client
) -> None:
    def row(name: str) -> str:
        page = admin_client.get("/parameters/", {"q": name}, **HTMX).content.decode()
        start = page.index(f'data-param="{name}"')
        return page[start : page.index("</tr>", start)]

    assert 'data-default="C.UTF-8"' in row("lc_messages")  # initdb's, not the boot value ''
    assert "Reset lc_messages to default (C.UTF-8)" in row("lc_messages")
    assert 'data-default="4096"' in row("work_mem")  # no file sets it: the boot value


def test_a_save_the_history_cannot_record_is_applied_and_says_so(
    server: ManagedServer, admin_client: Client
) -> None:
    with read_only_console_db():
        response = save(
            admin_client, {"name": "work_mem", "value:work_mem": "8MB", "base:work_mem": "4096"}
        )
    assert response.status_code == 200
    assert json.loads(response["HX-Trigger"]) == {"parametersSaved": {"applied": ["work_mem"]}}
    body = response.content.decode()
    assert "Saved 1 parameter" in body
    assert (
        'class="message warning" role="alert">work_mem was applied to the server, but could not '
        "be recorded in the change history: attempt to write a readonly database."
    ) in body
    assert show(server, "work_mem") == "8MB"
    assert not ParameterChange.objects.exists()


def test_history_panel_shows_who_changed_what(server: ManagedServer, admin_client: Client) -> None:
    save(admin_client, {"name": "enable_seqscan", "value:enable_seqscan": "off"})
    history = admin_client.get("/parameters/history/").content.decode()
    assert "enable_seqscan" in history and "ada" in history and "Applied" in history


@pytest.mark.parametrize(("method", "url"), WRITES + SETTINGS_WRITES)
def test_reader_may_look_but_every_write_is_forbidden(
    server: ManagedServer, reader_client: Client, method: str, url: str
) -> None:
    assert reader_client.get("/parameters/").status_code == 200
    response = getattr(reader_client, method)(
        url, {"name": "work_mem", "value:work_mem": "8MB"}, **HTMX
    )
    assert response.status_code == 403
    assert show(server, "work_mem") == "4MB"


@pytest.mark.parametrize(("method", "url"), WRITES)
def test_settings_manager_may_not_change_parameters(
    server: ManagedServer, manager_client: Client, method: str, url: str
) -> None:
    response = getattr(manager_client, method)(url, {"name": "work_mem", "value:work_mem": "8MB"})
    assert response.status_code == 403


def test_superuser_counts_as_admin(server: ManagedServer, superuser_client: Client) -> None:
    response = save(superuser_client, {"name": "enable_seqscan", "value:enable_seqscan": "off"})
    assert response.status_code == 200
    assert show(server, "enable_seqscan") == "off"


POSTS = [url for method, url in WRITES + SETTINGS_WRITES if method == "post"]


@pytest.mark.parametrize("url", POSTS + READER_POSTS)
def test_writes_need_the_csrf_token(server: ManagedServer, db: None, url: str) -> None:
    from django.contrib.auth.models import User

    client = Client(enforce_csrf_checks=True)
    client.force_login(User.objects.create_superuser("eve", password="pw-for-tests-only"))
    response = client.post(url, {"name": "work_mem", "value:work_mem": "8MB"})
    assert response.status_code == 403
    assert b"CSRF" in response.content
    assert show(server, "work_mem") == "4MB"


def test_a_value_the_server_refuses_saves_nothing_and_says_why(
    server: ManagedServer, admin_client: Client
) -> None:
    response = save(
        admin_client,
        {
            "name": ["work_mem", "default_text_search_config"],
            "value:work_mem": "16MB",
            "value:default_text_search_config": "pg_catalog.no_such_config",
        },
    )
    assert response.status_code == 422
    assert json.loads(response["HX-Trigger"]) == {"parametersSaved": {"applied": []}}
    body = response.content.decode()
    assert "Nothing was applied: the server refused <code>default_text_search_config</code>" in body
    assert "Not applied either: <code>work_mem</code>" in body
    assert show(server, "work_mem") == "4MB"
    assert not ParameterChange.objects.exists()


def test_blade_says_so_when_the_server_is_unreachable(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANAGED_DATABASE_URL", "postgresql://postgres@127.0.0.1:9/postgres")
    response = admin_client.get("/parameters/")
    assert response.status_code == 503
    assert "Cannot read the server" in response.content.decode()


def test_external_server_offers_no_restart_but_says_how(
    server: ManagedServer, admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANAGED_DATABASE_URL", server.uri())
    edit = {"name": "max_connections", "value:max_connections": "150"}
    dialog = save(admin_client, edit).content.decode()
    assert "Save only" in dialog and "Save and restart" not in dialog
    assert "The managed server is external (MANAGED_DATABASE_URL)" in dialog
    saved = save(admin_client, {**edit, "restart": "yes"})
    body = saved.content.decode()
    assert "the console cannot restart it" in body and "Restart pending" in body


def test_pages_hold_fifty_rows_each(server: ManagedServer, admin_client: Client) -> None:
    first = admin_client.get("/parameters/", **HTMX).content.decode()
    second = admin_client.get("/parameters/", {"page": "2"}, **HTMX).content.decode()
    assert first.count('class="param-row') == second.count('class="param-row') == 50
    assert 'data-param="allow_in_place_tablespaces"' not in second
    assert "page=3" in second and "page=1" in second  # next and previous links


def test_ticking_azure_local_ai_asks_first_even_without_the_value_the_page_showed(
    server: ManagedServer, admin_client: Client
) -> None:
    from console.deployments.models import Deployment

    before = show(server, "azure.extensions")
    response = save(
        admin_client, {"name": "azure.extensions", "value:azure.extensions": "azure_local_ai"}
    )
    assert response["HX-Retarget"] == "#dialog-host"
    assert "Save and deploy" in response.content.decode()
    assert show(server, "azure.extensions") == before
    assert not Deployment.objects.exists()
