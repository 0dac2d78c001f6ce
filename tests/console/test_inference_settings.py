"""The inference settings form against the session's real sidecar, and SQL through the
managed server wired to it."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.test import Client
from django.utils.html import escape
from psycopg import sql

from console.inference_settings import service
from console.inference_settings.models import SettingChange
from inference.client import InferenceClient, InferenceUnavailable
from inference.sidecar_settings import TIMES, usable_cpus
from serverparams.apply import auto_conf
from serverparams.server import ManagedServer
from tests.console.servers import UNUSED_SIDECAR_URL, restore_auto_conf
from tests.fixtures.pg import allow_extensions
from tests.fixtures.rerankers import deploy_reranker
from tests.fixtures.sidecar import TINY_URI, SidecarProcess

URL = "/settings/"
SQL_DB = "inference_settings_tests"
HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "settings-body"}


@pytest.fixture
def live(settings: Any, sidecar: SidecarProcess) -> Iterator[SidecarProcess]:
    """The console pointed at the session's sidecar; every setting is put back afterwards."""
    settings.INFERENCE_URL = sidecar.url
    settings.INFERENCE_TOKEN = ""
    before = sidecar.client.settings()
    yield sidecar
    sidecar.client.update_settings(before)


@pytest.fixture
def sql_conn(managed_pg: ManagedServer) -> Iterator[psycopg.Connection]:
    """A session in a database of its own with azure_local_ai, on the managed server wired to
    the session's sidecar; the allowlist is put back and the database dropped afterwards."""
    with managed_pg.connect() as conn:
        snapshot = auto_conf(conn)
        allow_extensions(conn, "azure_local_ai")
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SQL_DB))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SQL_DB)))
    try:
        with managed_pg.connect(SQL_DB) as conn:
            conn.execute("CREATE EXTENSION azure_local_ai")
            yield conn
    finally:
        with managed_pg.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SQL_DB))
            )
            restore_auto_conf(conn, snapshot)


def posted(sidecar: SidecarProcess, **changes: Any) -> dict[str, str]:
    """What the browser posts for the form as the sidecar has it now, with ``changes`` typed
    in: every field, and the value the page showed beside each (``initial-<key>``)."""
    schema = sidecar.client.settings_schema()
    values = sidecar.client.settings()
    data: dict[str, str] = {}
    for entry in schema:
        key, kind = entry["key"], entry["type"]
        shown = values[key]
        data[f"initial-{key}"] = str(shown)
        new = changes.get(key, shown)
        if kind == "bool":
            if new:  # an unticked box is not posted
                data[key] = "on"
        else:
            data[key] = str(new)
    return data


def row(page: str, key: str) -> str:
    """The HTML of one setting's row."""
    start = page.rindex("<tr", 0, page.index(f'data-setting="{key}"'))
    return page[start : page.index("</tr>", start)]


def test_form_shows_each_setting_with_value_default_range_and_explanation(
    live: SidecarProcess, admin_client: Client
) -> None:
    schema = live.client.settings_schema()
    live.client.update_settings({"max_batch_size": 32})
    response = admin_client.get(URL)
    assert response.status_code == 200
    page = response.content.decode()
    keys = [entry["key"] for entry in schema]
    assert {"intra_op_parallelism", "inter_op_parallelism", "spin_control", "max_wait_ms"} <= set(
        keys
    )
    for entry in schema:
        html = row(page, entry["key"])
        assert f'<label for="id_{entry["key"]}">{entry["key"]}</label>' in html
        assert "default: " in html
        assert escape(entry["help"]) in html
        assert f'aria-describedby="hint-{entry["key"]} help-{entry["key"]}' in html
    batch = row(page, "max_batch_size")
    assert 'value="32"' in batch and 'min="1"' in batch and 'max="4096"' in batch
    assert "default: 64<" in batch and "allowed: 1 to 4,096<" in batch
    assert "Modified</span>" in batch
    assert "Modified</span>" not in row(page, "inter_op_parallelism")
    assert 'type="checkbox"' in row(page, "spin_control")
    assert 'id="settings-save"' in page and "Discard" in page and "Refresh" in page
    assert 'aria-current="page">Settings</li>' in page
    assert 'aria-current="page" class="active">Settings' in page


def test_save_applies_live_and_the_api_and_sql_agree(
    live: SidecarProcess, manager_client: Client, sql_conn: psycopg.Connection
) -> None:
    response = manager_client.post(URL, posted(live, max_wait_ms=5, spin_control=False))
    assert response.status_code == 200
    page = response.content.decode()
    reported = live.client.settings()
    assert reported["max_wait_ms"] == 5 and reported["spin_control"] is False
    # The page shows what the sidecar reports after the change.
    assert 'value="5"' in row(page, "max_wait_ms")
    assert "Modified</span>" in row(page, "max_wait_ms")
    assert "checked" not in row(page, "spin_control").split("<input", 2)[1]
    assert "Saved and applied live" in page
    (everything,) = sql_conn.execute("SELECT azure_local_ai.get_setting()").fetchone()
    assert everything == reported
    (one,) = sql_conn.execute("SELECT azure_local_ai.get_setting('max_wait_ms')").fetchone()
    assert float(one) == 5
    (spin,) = sql_conn.execute("SELECT azure_local_ai.get_setting('spin_control')").fetchone()
    assert spin == "false"


def test_a_change_made_in_sql_shows_on_the_page(
    live: SidecarProcess, reader_client: Client, sql_conn: psycopg.Connection
) -> None:
    sql_conn.execute("SELECT azure_local_ai.set_setting('max_batch_tokens', '2048')")
    page = reader_client.get(URL).content.decode()
    assert 'value="2048"' in row(page, "max_batch_tokens")
    assert "Modified</span>" in row(page, "max_batch_tokens")


def test_each_changed_key_is_recorded_and_shown_in_the_history(
    live: SidecarProcess, manager_client: Client
) -> None:
    before = live.client.settings()
    response = manager_client.post(URL, posted(live, max_wait_ms=7.5, max_batch_size=16))
    assert response.status_code == 200
    changes = {c.key: c for c in SettingChange.objects.all()}
    assert set(changes) == {"max_wait_ms", "max_batch_size"}
    wait = changes["max_wait_ms"]
    assert (wait.username, wait.user.username) == ("sam", "sam")  # type: ignore[union-attr]
    assert (wait.old_value, wait.new_value) == (service.value_text(before["max_wait_ms"]), "7.5")
    assert (changes["max_batch_size"].old_value, changes["max_batch_size"].new_value) == (
        str(before["max_batch_size"]),
        "16",
    )
    assert wait.changed_at is not None
    history = response.content.decode().split('id="history-panel"', 1)[1]
    assert "<td>sam</td><td>max_wait_ms</td>" in history and "<code>7.5</code>" in history
    # Saving the form as it stands changes nothing and records nothing.
    again = manager_client.post(URL, posted(live))
    assert "Nothing to save" in again.content.decode()
    assert SettingChange.objects.count() == 2


def test_save_over_htmx_answers_the_fragment(live: SidecarProcess, admin_client: Client) -> None:
    response = admin_client.post(URL, posted(live, max_batch_size=8), **HTMX)
    assert response.status_code == 200
    fragment = response.content.decode()
    assert fragment.lstrip().startswith('<div id="settings-body">')
    assert "<html" not in fragment
    assert 'value="8"' in row(fragment, "max_batch_size")
    assert live.client.settings()["max_batch_size"] == 8


def test_reader_sees_a_read_only_form_and_may_not_save(
    live: SidecarProcess, reader_client: Client
) -> None:
    page = reader_client.get(URL).content.decode()
    assert "only settings managers and admins can change them" in page
    form = page.split('id="settings-form"', 1)[1].split("</form>", 1)[0]
    inputs = [part.split(">", 1)[0] for part in form.split("<input")[1:]]
    editors = [i for i in inputs if 'type="hidden"' not in i]
    assert editors and all(" disabled" in i for i in editors)
    save = page.split('id="settings-save"', 1)[1].split(">", 1)[0]
    assert "disabled" in save and "Your role may not change the inference settings" in save
    before = live.client.settings()
    response = reader_client.post(URL, posted(live, max_wait_ms=9))
    assert response.status_code == 403
    assert live.client.settings() == before
    assert not SettingChange.objects.exists()


def test_anonymous_users_are_sent_to_sign_in(live: SidecarProcess, client: Client) -> None:
    before = live.client.settings()
    for response in (client.get(URL), client.post(URL, posted(live, max_wait_ms=9))):
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/?next=/settings/")
    assert live.client.settings() == before


@pytest.mark.parametrize(
    ("key", "typed", "reason"),
    [
        ("max_wait_ms", "5000", "Must be between 0 and 1,000 ms."),
        ("intra_op_parallelism", "-1", "Must be between 0 and 256 threads."),
        ("intra_op_parallelism", "many", "Enter a whole number."),
        ("max_wait_ms", "soon", "Enter a number."),
        ("max_batch_size", "", "This field is required."),
    ],
)
def test_invalid_values_are_refused_beside_the_field_and_nothing_is_applied(
    live: SidecarProcess, manager_client: Client, key: str, typed: str, reason: str
) -> None:
    before = live.client.settings()
    # A valid change in the same save is not applied either.
    data = posted(live, **{"max_batch_size": before["max_batch_size"] // 2, key: typed})
    response = manager_client.post(URL, data)
    assert response.status_code == 422
    page = response.content.decode()
    html = row(page, key)
    assert "has-error" in html and f'<p class="row-error" id="error-{key}">' in html
    assert reason in html
    assert f'value="{typed}"' in html or typed == ""  # what was typed stays, to be corrected
    assert "Nothing was applied." in page
    assert live.client.settings() == before
    assert not SettingChange.objects.exists()


def test_the_sidecars_own_refusal_is_shown_beside_its_field(
    live: SidecarProcess, manager_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A console whose form allows more than the sidecar (say, an older schema) still shows
    the sidecar's reason beside the field, and nothing is applied."""
    read = service.read

    def wider() -> service.Snapshot:
        snapshot = read()
        specs = [
            service.Spec(**{**vars(s), "maximum": 10_000}) if s.key == "max_wait_ms" else s
            for s in snapshot.specs
        ]
        return service.Snapshot(specs=specs, values=snapshot.values)

    monkeypatch.setattr(service, "read", wider)
    before = live.client.settings()
    response = manager_client.post(URL, posted(live, max_wait_ms=5000, max_batch_size=8))
    assert response.status_code == 422
    html = row(response.content.decode(), "max_wait_ms")
    assert "must be at most 1000 ms, got 5000" in html
    assert live.client.settings() == before
    assert not SettingChange.objects.exists()


def test_the_page_shows_the_layout_and_refuses_one_the_machine_cannot_run(
    live: SidecarProcess, manager_client: Client
) -> None:
    """The engine's layout (sessions x threads) as it resolves on the sidecar's machine, and
    a layout with more threads than CPUs refused beside the field that asked for it."""
    page = manager_client.get(URL).content.decode()
    layout = live.client.health()["layout"]
    assert f"<strong>{escape(layout['description'])}</strong>" in page
    response = manager_client.post(URL, posted(live, engine_sessions=2, intra_op_parallelism=1))
    assert response.status_code == 200, response.content.decode()
    assert f"<strong>2 sessions {TIMES} 1 thread (and 1 {TIMES} 2 for lone requests) on " in (
        response.content.decode()
    )
    before = live.client.settings()
    too_many = usable_cpus() + 1
    response = manager_client.post(URL, posted(live, engine_sessions=too_many, max_wait_ms=7))
    assert response.status_code == 422
    html = row(response.content.decode(), "engine_sessions")
    assert "has-error" in html and f"more than the {too_many - 1} CPUs" in html
    assert live.client.settings() == before


def test_refusals_are_split_by_setting() -> None:
    keys = ["max_wait_ms", "spin_control"]
    message = (
        "settings not changed: max_wait_ms: must be at most 1000 ms, got 5000; "
        "spin_control: must be true or false, got 'x'"
    )
    assert service.refusal_by_key(message, keys) == {
        "max_wait_ms": "must be at most 1000 ms, got 5000",
        "spin_control": "must be true or false, got 'x'",
    }
    unknown = "settings not changed: nope: unknown setting; known settings: max_wait_ms"
    assert service.refusal_by_key(unknown, keys) == {"": unknown}
    assert service.refusal_by_key("missing bearer token", keys) == {"": "missing bearer token"}


def test_someone_elses_change_is_not_overwritten(
    live: SidecarProcess, manager_client: Client
) -> None:
    data = posted(live, max_wait_ms=5)
    live.client.update_settings({"max_wait_ms": 7})  # someone else, after the page was read
    response = manager_client.post(URL, data)
    assert response.status_code == 422
    page = response.content.decode()
    assert "Someone else changed this to 7 ms" in row(page, "max_wait_ms")
    assert live.client.settings()["max_wait_ms"] == 7
    # The page now compares with 7: saving again replaces it deliberately.
    assert 'name="initial-max_wait_ms" value="7"' in row(page, "max_wait_ms")
    again = manager_client.post(URL, {**data, "initial-max_wait_ms": "7"})
    assert again.status_code == 200
    assert live.client.settings()["max_wait_ms"] == 5
    # An untouched field that someone else changed keeps their value.
    data = posted(live, max_batch_size=16)
    live.client.update_settings({"max_batch_tokens": 4096})
    assert manager_client.post(URL, data).status_code == 200
    after = live.client.settings()
    assert (after["max_batch_size"], after["max_batch_tokens"]) == (16, 4096)


def test_a_change_the_sidecar_does_not_confirm_in_time_shows_what_it_holds(
    live: SidecarProcess, manager_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer to the change is lost (a timeout while models are rebuilt, say): the page
    reads the values again, and records what did change."""

    class AnswerLost(InferenceClient):
        def update_settings(self, updates: Mapping[str, Any]) -> dict[str, Any]:
            super().update_settings(updates)
            raise InferenceUnavailable(self.base_url, "no answer in time")

    monkeypatch.setattr(
        service, "sidecar_client", lambda timeout: AnswerLost(live.url, "", timeout)
    )
    response = manager_client.post(URL, posted(live, max_batch_size=24))
    assert response.status_code == 200
    page = response.content.decode()
    assert "The sidecar did not confirm the change in time." in page
    assert 'value="24"' in row(page, "max_batch_size")
    assert SettingChange.objects.get().new_value == "24"


@pytest.mark.parametrize("htmx", [False, True])
def test_sidecar_down_says_so_and_what_to_do(
    settings: Any, manager_client: Client, htmx: bool
) -> None:
    settings.INFERENCE_URL = UNUSED_SIDECAR_URL
    headers = HTMX if htmx else {}
    for response in (
        manager_client.get(URL, **headers),
        manager_client.post(URL, {"max_wait_ms": "5"}, **headers),
    ):
        assert response.status_code == 503
        page = response.content.decode()
        assert "The inference sidecar at http://127.0.0.1:9 cannot be reached" in page
        assert "<code>python -m inference serve</code>" in page and "INFERENCE_URL" in page
        assert "select Refresh" in page
        assert 'id="settings-form"' not in page
        assert ("<html" in page) is not htmx
    assert not SettingChange.objects.exists()


def test_a_hung_sidecar_gives_up_after_the_render_timeout(
    settings: Any, reader_client: Client
) -> None:
    with socket.socket() as hung:  # accepts connections, never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen()
        settings.INFERENCE_URL = f"http://127.0.0.1:{hung.getsockname()[1]}"
        started = time.monotonic()
        response = reader_client.get(URL)
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert "no answer in time" in response.content.decode()
    assert elapsed < service.RENDER_TIMEOUT_S + 3


def test_default_rerank_model_is_chosen_from_the_registered_rerankers(
    live: SidecarProcess, manager_client: Client, tmp_path: Path
) -> None:
    """The "uri" setting is a choice of the rerankers the sidecar has registered, or none:
    an embedding model or an unknown URI is refused beside the field before anything is sent,
    the chosen one is applied and recorded, and the sidecar then ranks with it unasked. A
    value set elsewhere that is no reranker stays shown, marked, and is kept on save."""
    key = "default_rerank_model"
    reranker = deploy_reranker(tmp_path, "bert", "settings-reranker:v1")
    live.client.register(reranker.uri, str(reranker.stored.path))
    try:
        html = row(manager_client.get(URL).content.decode(), key)
        assert '<select name="default_rerank_model"' in html
        assert '<option value="" selected>(none)</option>' in html
        assert f'<option value="{reranker.uri}">{reranker.uri}</option>' in html
        assert TINY_URI not in html  # an embedding model is not offered
        assert "default: (none)<" in html
        assert "allowed: a registered reranker, or (none)<" in html

        for typed, reason in (
            (TINY_URI, f"{TINY_URI} is an embedding model, not a reranker"),
            ("nope:v1", "nope:v1 is not a reranker the inference sidecar has registered"),
        ):
            response = manager_client.post(URL, posted(live, **{key: typed}))
            assert response.status_code == 422
            html = row(response.content.decode(), key)
            assert "has-error" in html and reason in html
            assert live.client.settings()[key] == ""
        assert not SettingChange.objects.exists()

        response = manager_client.post(URL, posted(live, **{key: reranker.uri}))
        assert response.status_code == 200
        html = row(response.content.decode(), key)
        assert f'<option value="{reranker.uri}" selected>' in html and "Modified</span>" in html
        assert live.client.settings()[key] == reranker.uri
        change = SettingChange.objects.get(key=key)
        assert (change.old_value, change.new_value) == ("", reranker.uri)
        # Asked for no model, the sidecar ranks with it.
        ranked = live.client.rerank(None, "what stores vectors?", ["PostgreSQL", "a fox"])
        assert sorted(index for index, _ in ranked) == [0, 1]

        # Set elsewhere to a model that is not a reranker: shown as it is, and kept when
        # another setting is saved.
        live.client.update_settings({key: TINY_URI})
        html = row(manager_client.get(URL).content.decode(), key)
        assert f'<option value="{TINY_URI}" selected>{TINY_URI} (an embedding model)' in html
        response = manager_client.post(URL, posted(live, max_batch_size=8))
        assert response.status_code == 200
        assert live.client.settings()[key] == TINY_URI
    finally:
        live.client.update_settings({key: ""})
        live.client.unregister(reranker.uri)
