"""The console's security: production settings pass Django's deployment checklist, sign-in is
rate-limited, every route asks for a signed-in user, the right role and a CSRF token, and no
secret reaches a page or a log.

The route tests walk the whole URL conf, so that a route added later is checked without
anyone remembering to list it.
"""

from __future__ import annotations

import logging
import os
import re
import runpy
import secrets
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from axes.models import AccessAttempt
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.db.models import F
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve, reverse

from inference import catalog as model_catalog
from inference.process import ChildProcess, free_port, http_ready
from serverparams.server import ManagedServer
from tests.console.servers import UNUSED_SIDECAR_URL

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SETTINGS_PATH = PROJECT_ROOT / "console" / "settings.py"

# -- the URL conf, walked ---------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    pattern: str  # as the URL conf joins it, e.g. "deployments/<int:pk>/cancel/"
    name: str | None  # with its namespaces, e.g. "deployments:cancel"
    url: str  # a URL that resolves to this route

    def __str__(self) -> str:
        return self.name or self.pattern


# A converter (<int:pk>, <uri>) or a named regex group ((?P<app_label>auth|axes)).
_PARAMETER = re.compile(r"<(?:\w+:)?(?P<name>\w+)>|\(\?P<(?P<group>\w+)>(?P<regex>[^()]*)\)")


def _sample(match: re.Match[str]) -> str:
    """A plausible value for one parameter: the catalog's default model for a model URI, the
    first of a few samples a regex group accepts, else 1 (an id)."""
    if match["group"]:
        return next(v for v in ("1", "auth", "x") if re.fullmatch(match["regex"], v))
    if match["name"] == "uri":
        return model_catalog.default_uri()
    return "1"


def _walk(patterns: list[Any], prefix: str = "", namespace: str = "") -> Iterator[Route]:
    for entry in patterns:
        pattern = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            inner = ":".join(n for n in (namespace, entry.namespace or "") if n)
            yield from _walk(entry.url_patterns, pattern, inner)
            continue
        assert isinstance(entry, URLPattern)
        name = f"{namespace}:{entry.name}" if namespace and entry.name else entry.name
        url = "/" + _PARAMETER.sub(_sample, pattern).replace("^", "").replace("$", "")
        # The sample values must reach this very route, not an earlier one that also matches.
        assert resolve(url).func is entry.callback, (
            f"{url} does not resolve to the route {pattern!r}: give _sample a value for it"
        )
        yield Route(pattern=pattern, name=name, url=url)


def all_routes() -> list[Route]:
    return list(_walk(get_resolver().url_patterns))


def _is_admin_site(route: Route) -> bool:
    return route.pattern.startswith("admin/")


# Routes anyone may open: the sign-in forms themselves.
OPEN_TO_ANONYMOUS: dict[str, str] = {
    "login": "the console's sign-in form",
    "admin:login": "Django admin's sign-in form (it signs in staff only)",
}

# Routes a reader (no permission at all) may POST to, each with the reason it is harmless.
READER_MAY_POST: dict[str, str] = {
    "login": "signing in again, as anyone may",
    "logout": "signing out",
    "password_change": "changing one's own password, which asks for the old one",
    "playground:embed": "embedding texts only reads: the sidecar computes, nothing is stored",
    "playground:rank": "ranking documents only reads: rank() scores them, nothing is stored "
    "(an extension created for the call is rolled back with it)",
    "admin:login": "the admin's sign-in form, as anyone may",
}


def test_the_route_walk_reaches_every_app() -> None:
    """A guard on the walk itself: were it to miss a part of the URL conf, the tests below
    would pass for want of routes."""
    names = {route.name for route in all_routes()}
    for expected in (
        "overview",
        "serverparams:save",
        "deployments:deploy",
        "inference_settings:form",
        "playground:setup",
        "jobs:delete",
        "logout",
        "admin:auth_user_change",
        "admin:app_list",
    ):
        assert expected in names
    assert set(OPEN_TO_ANONYMOUS) <= names and set(READER_MAY_POST) <= names
    # Password reset by e-mail is not offered: there is no mail server to send it.
    assert not {n for n in names if n and "password_reset" in n}


@pytest.mark.django_db
def test_every_route_sends_anonymous_visitors_to_sign_in(client: Client) -> None:
    """To the console's sign-in (Django's admin may send them to its own)."""
    wrong = []
    for route in all_routes():
        if route.name in OPEN_TO_ANONYMOUS:
            continue
        sign_in = {reverse("login")}
        if _is_admin_site(route):
            sign_in.add(reverse("admin:login"))
        for method in (client.get, client.post):
            response = method(route.url)
            location = response.get("Location", "")
            page, _, after = location.partition("?next=")
            if response.status_code != 302 or page not in sign_in or not after:
                wrong.append(f"{method.__name__.upper()} {route.url} ({route}): {response}")
    assert not wrong, "answered anonymous visitors:\n" + "\n".join(wrong)


@pytest.mark.django_db
def test_every_write_route_refuses_a_reader(reader_client: Client) -> None:
    """A reader's POST is refused (403), or not accepted at all (405), wherever a POST
    changes something; Django's admin sends anyone who is not staff to its sign-in."""
    admin_entrances = {reverse("admin:login"), reverse("admin:index")}
    wrong = []
    for route in all_routes():
        if route.name in READER_MAY_POST:
            continue
        response = reader_client.post(route.url)
        if _is_admin_site(route):
            refused = response.status_code == 302 and (
                response["Location"].split("?")[0] in admin_entrances
            )
        else:
            refused = response.status_code in (403, 405)
        if not refused:
            wrong.append(f"POST {route.url} ({route}): {response}")
    assert not wrong, "accepted a reader's POST:\n" + "\n".join(wrong)


@pytest.mark.django_db
def test_every_route_refuses_a_post_without_csrf_token(superuser_client: Client) -> None:
    """Even a superuser's POST without the CSRF token is refused, on every route (a route
    that does not take POST at all is refused by the same check first)."""
    client = Client(enforce_csrf_checks=True)
    client.cookies = superuser_client.cookies  # the same session
    wrong = []
    for route in all_routes():
        response = client.post(route.url)
        if response.status_code != 403:
            wrong.append(f"POST {route.url} ({route}): {response}")
    assert not wrong, "accepted a POST without CSRF token:\n" + "\n".join(wrong)
    # The same session with its token gets past the check (a control on the one above).
    client.get(reverse("login"))
    token = client.cookies[django_settings.CSRF_COOKIE_NAME].value
    response = client.post(reverse("logout"), HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 302


# -- sign-in rate limit -------------------------------------------------------------------------

PASSWORD = "the-right-password-for-tests"


def _sign_in(client: Client, username: str, password: str) -> Any:
    return client.post(reverse("login"), {"username": username, "password": password})


@pytest.mark.django_db
def test_sign_in_locks_a_user_name_out_from_one_address_after_five_failures(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    User.objects.create_user("lena", password=PASSWORD)
    User.objects.create_user("omar", password=PASSWORD)
    limit = django_settings.AXES_FAILURE_LIMIT
    assert limit == 5
    for _ in range(limit - 1):
        response = _sign_in(client, "lena", "wrong")
        assert response.status_code == 200
        assert "didn't match" in response.content.decode()

    with caplog.at_level(logging.WARNING):
        response = _sign_in(client, "lena", "wrong")
    page = response.content.decode()
    assert response.status_code == 429
    # The sign-in page, saying why and for how long, not a bare error page.
    assert "Too many failed sign-ins" in page and "locked for 15 minutes" in page
    assert 'name="username"' in page and 'value="lena"' in page and "Sign in" in page
    # Logged with the user name and the address, so that an admin knows whom to unlock.
    lockouts = [r.getMessage() for r in caplog.records if "Locking out" in r.getMessage()]
    assert len(lockouts) == 1 and "lena" in lockouts[0] and "127.0.0.1" in lockouts[0]
    assert "wrong" not in caplog.text  # never the password

    # Locked: even the right password does not sign in.
    response = _sign_in(client, "lena", PASSWORD)
    assert response.status_code == 429 and "_auth_user_id" not in client.session
    # The lock holds one user name from one address: others still sign in.
    assert _sign_in(Client(REMOTE_ADDR="10.0.0.7"), "lena", PASSWORD).status_code == 302
    assert _sign_in(client, "omar", PASSWORD).status_code == 302

    # Once the wait is over, the right password signs in.
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - timedelta(minutes=16))
    response = _sign_in(Client(), "lena", PASSWORD)
    assert response.status_code == 302 and response["Location"] == "/"


@pytest.mark.django_db
def test_a_successful_sign_in_forgets_earlier_failures(client: Client) -> None:
    User.objects.create_user("lena", password=PASSWORD)
    for _ in range(4):
        _sign_in(client, "lena", "wrong")
    assert _sign_in(client, "lena", PASSWORD).status_code == 302
    client.post(reverse("logout"))
    for _ in range(4):
        assert _sign_in(client, "lena", "wrong").status_code == 200
    assert _sign_in(client, "lena", PASSWORD).status_code == 302


# -- settings -----------------------------------------------------------------------------------

# Every variable the settings below depend on, so that the caller's environment does not.
_SETTINGS_VARIABLES = (
    "HTTPS",
    "TRUST_X_FORWARDED_PROTO",
    "SECRET_KEY",
    "DEBUG",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
    "SECURE_HSTS_SECONDS",
    "SESSION_COOKIE_AGE",
)
PRODUCTION = {
    "HTTPS": "true",
    "TRUST_X_FORWARDED_PROTO": "true",
    "ALLOWED_HOSTS": "console.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://console.example.com",
}


@pytest.fixture
def load_settings(monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, Any]]:
    """Run console/settings.py afresh with these variables (and none of the caller's)."""

    def load(**env: str) -> dict[str, Any]:
        for name in _SETTINGS_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return runpy.run_path(str(SETTINGS_PATH))

    return load


def _environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SETTINGS_VARIABLES}
    return {**env, **extra}


def test_production_settings_pass_the_deployment_checklist(tmp_path: Path) -> None:
    env = _environment(**PRODUCTION, SECRET_KEY=secrets.token_urlsafe(50), VAR_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Only the preload warning is silenced, deliberately (see console/settings.py).
    assert "(1 silenced)" in result.stdout


def test_https_turns_on_secure_cookies_redirect_and_hsts(
    load_settings: Callable[..., dict[str, Any]],
) -> None:
    loaded = load_settings(**PRODUCTION, SECRET_KEY=secrets.token_urlsafe(50))
    assert loaded["SESSION_COOKIE_SECURE"] and loaded["CSRF_COOKIE_SECURE"]
    assert loaded["SECURE_SSL_REDIRECT"]
    assert loaded["SECURE_HSTS_SECONDS"] == 365 * 24 * 3600
    assert loaded["SECURE_HSTS_INCLUDE_SUBDOMAINS"] and not loaded["SECURE_HSTS_PRELOAD"]
    assert loaded["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")
    assert loaded["SESSION_COOKIE_HTTPONLY"] and loaded["SESSION_COOKIE_AGE"] == 12 * 3600
    assert loaded["ALLOWED_HOSTS"] == ["console.example.com"]
    # The proxy header is trusted only when told so.
    direct = {**PRODUCTION, "TRUST_X_FORWARDED_PROTO": "false"}
    assert "SECURE_PROXY_SSL_HEADER" not in load_settings(**direct, SECRET_KEY="k" * 50)


def test_the_defaults_serve_plain_http_on_loopback(
    load_settings: Callable[..., dict[str, Any]],
) -> None:
    """What `make run` and the tests use: no variable set at all."""
    loaded = load_settings()
    assert loaded["SECRET_KEY"] == loaded["DEVELOPMENT_SECRET_KEY"] and not loaded["DEBUG"]
    assert not loaded["SESSION_COOKIE_SECURE"] and not loaded["CSRF_COOKIE_SECURE"]
    assert not loaded["SECURE_SSL_REDIRECT"] and loaded["SECURE_HSTS_SECONDS"] == 0
    assert "SECURE_PROXY_SSL_HEADER" not in loaded
    # Loopback under other names, and a developer's own DEBUG, keep the built-in key working.
    load_settings(ALLOWED_HOSTS="localhost, 127.0.0.1,::1,[::1]")
    load_settings(ALLOWED_HOSTS="*", DEBUG="true")


@pytest.mark.parametrize(
    "env",
    [
        {"HTTPS": "true"},
        {"ALLOWED_HOSTS": "console.example.com"},
        {"ALLOWED_HOSTS": "127.0.0.1,*"},
    ],
    ids=["https", "a-host-name", "any-host"],
)
def test_the_built_in_secret_key_is_refused_once_served_to_others(
    load_settings: Callable[..., dict[str, Any]], env: dict[str, str]
) -> None:
    with pytest.raises(ImproperlyConfigured, match="SECRET_KEY is the built-in development key"):
        load_settings(**env)
    load_settings(**env, SECRET_KEY=secrets.token_urlsafe(50))


def test_the_defaults_pass_djangos_checks() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=PROJECT_ROOT,
        env=_environment(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- no secret in a page or a log -------------------------------------------------------------


@dataclass(frozen=True)
class Secrets:
    inference_token: str
    secret_key: str
    database_password: str
    managed_password: str

    @classmethod
    def new(cls) -> Secrets:
        def mark(what: str) -> str:
            return f"{what}-{uuid.uuid4().hex[:12]}"

        return cls(
            inference_token=mark("tokensecret"),
            secret_key=mark("keysecret") + secrets.token_urlsafe(40),
            database_password=mark("dbpwsecret"),
            managed_password=mark("managedpwsecret"),
        )

    def found_in(self, text: str) -> list[str]:
        return [name for name, value in vars(self).items() if value in text]


# How the overview shows that it reached the managed server.
RUNNING = '<span class="state ok">Running</span>'


def _get_pages(get: Callable[[str], Any]) -> dict[str, str]:
    """Every route's page as GET answers it (an error page too), by URL."""
    pages = {}
    for route in all_routes():
        response = get(route.url)
        pages[route.url] = response.content.decode(errors="replace")
    # The parameter list in full, and searched, where a hidden parameter would show.
    for query in ("?tab=all&page=2", "?tab=all&page=3", "?q=token", "?q=azure_local_ai"):
        url = reverse("serverparams:blade") + query
        pages[url] = get(url).content.decode(errors="replace")
    return pages


def _leaks(secret_values: Secrets, pages: dict[str, str]) -> list[str]:
    return [
        f"{url}: {', '.join(found)}"
        for url, page in pages.items()
        if (found := secret_values.found_in(page))
    ]


@pytest.fixture
def token_in_server(server: ManagedServer, pg: psycopg.Connection) -> Iterator[str]:
    """The managed server holding a sidecar token, as azure_local_ai.service_token (the
    ``server`` fixture puts the parameter back)."""
    token = f"servertokensecret-{uuid.uuid4().hex[:12]}"
    pg.execute(f"ALTER SYSTEM SET azure_local_ai.service_token = '{token}'")
    pg.execute("SELECT pg_reload_conf()")
    yield token


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("dsn", "reachable"),
    [
        ("postgresql://postgres:{password}@127.0.0.1:{port}/postgres", True),
        ("postgresql://postgres:{password}@127.0.0.1:9/postgres", False),
        ("postgresql://postgres@127.0.0.1:9/postgres?password={password}", False),
    ],
    ids=["server-up", "server-unreachable", "password-in-query"],
)
def test_no_secret_in_any_page_or_log(
    dsn: str,
    reachable: bool,
    server: ManagedServer,
    token_in_server: str,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every GET page as a superuser, with every secret set to a recognisable value: the
    managed server given as an external DSN with a password (up, or where nothing listens,
    so that the error messages that name it are shown), the sidecar with a token."""
    values = Secrets.new()
    settings.SECRET_KEY = values.secret_key
    settings.INFERENCE_TOKEN = values.inference_token
    settings.INFERENCE_URL = UNUSED_SIDECAR_URL
    database = settings.DATABASES["default"]
    monkeypatch.setitem(database, "PASSWORD", values.database_password)  # SQLite ignores it
    monkeypatch.setenv("INFERENCE_TOKEN", values.inference_token)
    monkeypatch.setenv("INFERENCE_URL", UNUSED_SIDECAR_URL)
    managed = dsn.format(password=values.managed_password, port=server.port)
    monkeypatch.setenv("MANAGED_DATABASE_URL", managed)
    monkeypatch.setenv(
        "DATABASE_URL", f"postgresql://console:{values.database_password}@db.invalid/console"
    )
    client = Client()
    client.force_login(User.objects.create_superuser("root", password=PASSWORD))
    with caplog.at_level(logging.DEBUG):
        pages = _get_pages(client.get)
    assert (RUNNING in pages["/"]) is reachable  # the pages did reach the server, or not
    assert "***" in pages["/"]  # the overview names the server, its password masked
    assert not _leaks(values, pages)
    assert token_in_server not in "".join(pages.values())
    assert not values.found_in(caplog.text), caplog.text


def test_no_secret_in_the_web_process_log(
    server: ManagedServer, pg: psycopg.Connection, tmp_path: Path
) -> None:
    """The console as `manage.py up` runs it (its output in VAR_DIR/log), configured with a
    password in both database URLs and a sidecar token, DEBUG off and logging at DEBUG:
    sign-in (a failed attempt first), every GET page, then every log file is read."""
    values = Secrets.new()
    database = f"security_{uuid.uuid4().hex[:8]}"
    pg.execute(f"CREATE DATABASE {database}")
    var_dir = tmp_path / "var"
    env = _environment(
        VAR_DIR=str(var_dir),
        SECRET_KEY=values.secret_key,
        DATABASE_URL=(
            f"postgresql://postgres:{values.database_password}@127.0.0.1:{server.port}/{database}"
        ),
        MANAGED_DATABASE_URL=(
            f"postgresql://postgres:{values.managed_password}@127.0.0.1:{server.port}/postgres"
        ),
        INFERENCE_URL=UNUSED_SIDECAR_URL,
        INFERENCE_TOKEN=values.inference_token,
        LOG_LEVEL="DEBUG",
        DJANGO_SUPERUSER_USERNAME="root",
        DJANGO_SUPERUSER_PASSWORD=PASSWORD,
        DJANGO_SUPERUSER_EMAIL="root@example.com",
        PYTHONUNBUFFERED="1",
    )
    manage = [sys.executable, "manage.py"]
    url = f"http://127.0.0.1:{free_port()}"
    try:
        for command in (["migrate", "--noinput"], ["createsuperuser", "--noinput"]):
            done = subprocess.run(
                [*manage, *command], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
            )
            assert done.returncode == 0, done.stdout + done.stderr
            assert not values.found_in(done.stdout + done.stderr)
        web = ChildProcess(
            "web",
            [*manage, "runserver", "--noreload", url.removeprefix("http://")],
            var_dir / "log" / "web.log",
            env=env,
            cwd=PROJECT_ROOT,
        )
        try:
            web.wait_ready(http_ready(f"{url}/accounts/login/"), 60)
            with httpx.Client(base_url=url, timeout=30) as http:
                for password in ("wrong", PASSWORD):
                    http.get("/accounts/login/")
                    signed_in = http.post(
                        "/accounts/login/",
                        data={
                            "username": "root",
                            "password": password,
                            "csrfmiddlewaretoken": http.cookies["csrftoken"],
                        },
                    )
                assert signed_in.status_code == 302, signed_in.text
                pages = _get_pages(http.get)
        finally:
            web.stop()
    finally:
        pg.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    assert RUNNING in pages["/"]
    assert not _leaks(values, pages)
    logs = {path: path.read_text(errors="replace") for path in (var_dir / "log").rglob("*")}
    assert "AXES: New login failure" in logs[var_dir / "log" / "web.log"]  # it did log
    leaked = {str(path): values.found_in(text) for path, text in logs.items()}
    assert not any(leaked.values()), leaked
