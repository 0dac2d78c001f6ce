"""The portal shell: sign-in, roles, first-run admin, overview, menu."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import AnonymousUser, Group, User
from django.core.management import call_command
from django.test import Client

from console.roles import (
    ADMIN,
    READER,
    ROLES,
    SETTINGS_MANAGER,
    can_change_settings,
    can_edit_parameters,
)
from serverparams.server import ManagedServer
from tests.fixtures.pg import free_port
from tests.fixtures.sidecar import TINY_URI, SidecarProcess, sidecar  # noqa: F401

pytestmark = pytest.mark.django_db
PROJECT_ROOT = Path(__file__).resolve().parents[2]
PAGES = [
    "/",
    "/parameters/",
    "/parameters/history/",
    "/deployments/",
    "/models/",
    "/models/all-MiniLM-L6-v2:v1/",
    "/settings/",
    "/notifications/",
    "/playground/",
]


def test_roles_exist_as_groups() -> None:
    assert set(Group.objects.values_list("name", flat=True)) >= set(ROLES)


@pytest.mark.parametrize(
    ("role", "superuser", "edit_parameters", "change_settings"),
    [
        (READER, False, False, False),
        (SETTINGS_MANAGER, False, False, True),
        (ADMIN, False, True, True),
        (None, True, True, True),
        (None, False, False, False),
    ],
)
def test_permission_helpers(
    role: str | None, superuser: bool, edit_parameters: bool, change_settings: bool
) -> None:
    user = User.objects.create_user("u", password="pw-for-tests-only", is_superuser=superuser)
    if role:
        user.groups.add(Group.objects.get(name=role))
    assert can_edit_parameters(user) is edit_parameters
    assert can_change_settings(user) is change_settings


def test_anonymous_users_have_no_permissions() -> None:
    assert not can_edit_parameters(AnonymousUser())
    assert not can_change_settings(AnonymousUser())


@pytest.mark.parametrize("url", PAGES)
def test_every_page_needs_a_sign_in(client: Client, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")


def test_anonymous_writes_are_redirected_not_applied(client: Client) -> None:
    response = client.post("/parameters/save/", {"name": "work_mem", "value:work_mem": "8MB"})
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_sign_in_and_out(client: Client) -> None:
    User.objects.create_user("rita", password="pw-for-tests-only")
    login_page = client.get("/accounts/login/")
    assert (
        login_page.status_code == 200 and b'autocomplete="current-password"' in login_page.content
    )
    wrong = client.post("/accounts/login/", {"username": "rita", "password": "nope"})
    assert b"didn't match" in wrong.content
    response = client.post(
        "/accounts/login/",
        {"username": "rita", "password": "pw-for-tests-only", "next": "/models/"},
    )
    assert response.status_code == 302 and response["Location"] == "/models/"
    assert client.get("/models/").status_code == 200
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/models/").status_code == 302


def test_shell_has_menu_breadcrumb_bell_and_csrf_header(admin_client: Client) -> None:
    page = admin_client.get("/models/").content.decode()
    for label in (
        "Overview",
        "Server parameters",
        "Deployments",
        "Models",
        "Settings",
        "Playground",
    ):
        assert f">{label}</a>" in page
    assert 'aria-current="page" class="active">Models' in page
    assert 'class="skip-link" href="#main"' in page
    assert 'aria-label="Breadcrumb"' in page
    assert 'aria-label="Notifications: 0"' in page
    assert 'hx-headers=\'{"X-CSRFToken": "' in page
    assert "Sign out" in page
    assert admin_client.get("/nothing/").status_code == 404


def test_bell_counts_recent_parameter_changes(admin_client: Client) -> None:
    from serverparams.models import ParameterChange

    ParameterChange.objects.create(
        username="ada", parameter="work_mem", old_value="4096", new_value="8192", status="applied"
    )
    page = admin_client.get("/models/").content.decode()
    assert 'aria-label="Notifications: 1"' in page
    assert "work_mem changed" in page


def test_bell_lists_inference_setting_changes_and_refreshes_in_place(admin_client: Client) -> None:
    from console.inference_settings.models import SettingChange

    SettingChange.objects.create(username="sam", key="max_wait_ms", old_value="2", new_value="5")
    fragment = admin_client.get("/notifications/", HTTP_HX_REQUEST="true").content.decode()
    assert 'aria-label="Notifications: 1"' in fragment
    assert "inference setting max_wait_ms changed" in fragment and 'href="/settings/"' in fragment
    assert "<html" not in fragment  # the bell's content alone, swapped into the open page


def test_ensureadmin_creates_the_first_admin_once(tmp_path: Path, settings) -> None:  # type: ignore[no-untyped-def]
    settings.VAR_DIR = tmp_path
    call_command("ensureadmin")
    password_file = tmp_path / "admin-password.txt"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    password = password_file.read_text().strip()
    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.check_password(password)
    assert can_edit_parameters(admin)
    call_command("ensureadmin")
    assert User.objects.count() == 1
    assert password_file.read_text().strip() == password


def test_ensureadmin_leaves_existing_users_alone(tmp_path: Path, settings) -> None:  # type: ignore[no-untyped-def]
    settings.VAR_DIR = tmp_path
    User.objects.create_user("rita", password="pw-for-tests-only")
    call_command("ensureadmin")
    assert not User.objects.filter(username="admin").exists()
    assert not (tmp_path / "admin-password.txt").exists()


def test_createsuperuser_noinput_makes_an_admin(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "VAR_DIR": str(tmp_path),
        "DJANGO_SUPERUSER_USERNAME": "boss",
        "DJANGO_SUPERUSER_PASSWORD": "a-long-password-for-tests",
        "DJANGO_SUPERUSER_EMAIL": "boss@example.com",
    }
    for command in (["migrate", "--noinput"], ["createsuperuser", "--noinput"]):
        subprocess.run(
            [sys.executable, "manage.py", *command],
            cwd=PROJECT_ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
    check = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            "from django.contrib.auth.models import User; from console.roles import "
            "can_edit_parameters as c; print(c(User.objects.get(username='boss')))",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert check.stdout.strip().splitlines()[-1] == "True"


def test_overview_shows_server_sidecar_and_machine(
    server: ManagedServer,
    admin_client: Client,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    settings.INFERENCE_URL = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    page = admin_client.get("/").content.decode()
    with server.connect() as conn:
        (version,) = conn.execute("SHOW server_version").fetchone()  # type: ignore[misc]
    assert f"<dd>{version.split()[0]}</dd>" in page
    assert f"postgresql://postgres@127.0.0.1:{server.port}/postgres" in page
    assert "Loaded</span>" in page  # azure_local_ai preloaded and SHOW azure.extensions works
    assert "0.6" in page  # pgvector available
    assert "Unreachable</span>" in page  # the sidecar is down, said cleanly
    assert "CPU cores" in page and " MB</dd>" in page and "GB free of" in page


def test_overview_shows_a_healthy_sidecar_and_its_loaded_models(
    server: ManagedServer,
    admin_client: Client,
    settings,  # type: ignore[no-untyped-def]
    sidecar: SidecarProcess,  # noqa: F811
) -> None:
    settings.INFERENCE_URL = sidecar.url
    settings.INFERENCE_TOKEN = sidecar.token or ""
    sidecar.client.load(TINY_URI)
    page = admin_client.get("/").content.decode()
    assert "Healthy</span>" in page
    assert f"<code>{TINY_URI}</code>" in page
