"""The console's one settings module, driven by environment variables with working defaults."""

from __future__ import annotations

import os
import warnings
from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from inference.config import env_bool, env_int, env_str, inference_token, inference_url, var_dir

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = var_dir()


def _env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


DEVELOPMENT_SECRET_KEY = "insecure-development-key-set-SECRET_KEY-in-production"
SECRET_KEY = env_str("SECRET_KEY", DEVELOPMENT_SECRET_KEY)
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = _env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")
CSRF_TRUSTED_ORIGINS = _env_list("CSRF_TRUSTED_ORIGINS", "")

# -- Served over HTTPS -------------------------------------------------------------------------
# HTTPS=true: cookies travel over HTTPS only, plain HTTP is redirected, and browsers are told
# to use nothing but HTTPS for this host and its subdomains (HSTS) for a year.
HTTPS = env_bool("HTTPS", False)
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = HTTPS
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 365 * 24 * 3600) if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
# Not preloaded: the preload list takes the registrable domain (all of example.com, not
# console.example.com) and months to leave, a decision for whoever owns the domain, not
# for one console on it.
SECURE_HSTS_PRELOAD = False
SILENCED_SYSTEM_CHECKS = ["security.W021"]
# Only behind a proxy that sets X-Forwarded-Proto itself, replacing what a client sent:
# anywhere else a client could claim HTTPS with that header.
if env_bool("TRUST_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# The session cookie is out of JavaScript's reach (Django's default, stated) and lasts a
# working day rather than Django's two weeks.
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 12 * 3600)

# Anyone who knows the built-in key can forge what Django signs with it: refuse it once the
# console is served to others. DEBUG=true stays a
# developer's own choice, and so do the loopback defaults of `make run` and the tests.
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]", "testserver"}
if (
    SECRET_KEY == DEVELOPMENT_SECRET_KEY
    and not DEBUG
    and (HTTPS or not set(ALLOWED_HOSTS) <= _LOCAL_HOSTS)
):
    raise ImproperlyConfigured(
        "SECRET_KEY is the built-in development key, which anyone can read, while the console "
        f"is served {'over HTTPS' if HTTPS else 'to ' + ', '.join(ALLOWED_HOSTS)}. Set "
        "SECRET_KEY to a long random value of your own, e.g. the output of: python -c "
        "'import secrets; print(secrets.token_urlsafe(50))'"
    )

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "console",
    "serverparams",
    "console.deployments",
    "console.inference_settings",
    "console.playground",
    "console.jobs",
    "axes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files are served by the app itself (no separate web server needed).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Every page needs a signed-in user unless its view says otherwise (login itself).
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: turns a locked-out sign-in into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "console.urls"
WSGI_APPLICATION = "console.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "console.navigation.portal",
            ],
        },
    },
]


def _database() -> dict[str, object]:
    url = env_str("DATABASE_URL", "")
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    if not url or parts.scheme == "sqlite":
        # The web process and the workers write to it at once: WAL lets readers go on while
        # one writes, and IMMEDIATE transactions wait for the lock instead of failing.
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": unquote(parts.path) if url else VAR_DIR / "console.sqlite3",
            "OPTIONS": {
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ValueError(
            f"DATABASE_URL must be a postgresql:// or sqlite:/// URL, got scheme {parts.scheme!r}"
        )
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.lstrip("/"),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": parts.port or "",
    }


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

# Sign-in attempts are counted by django-axes: after AXES_FAILURE_LIMIT failures for one user
# name from one address, that pair is locked out for AXES_COOLOFF_TIME (each further attempt
# starts it again). An admin can lift a lockout early: manage.py axes_reset_username NAME.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = 5
AXES_COOLOFF_TIME = timedelta(minutes=15)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "console.views.locked_out"
# The log names the user and the address (never the password, which django-axes always
# masks), so that whoever reads it knows whom to unlock.
AXES_SENSITIVE_PARAMETERS: list[str] = []
# Without the greeting every manage.py command would print.
AXES_VERBOSE = False

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
# Serve straight from static/ so that no collectstatic step is needed; STATIC_ROOT is only
# filled by an explicit collectstatic, so its absence is normal.
WHITENOISE_USE_FINDERS = True
warnings.filterwarnings("ignore", message="No directory at: ")

# Celery, with Redis as broker and result backend.
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# CELERY_QUEUE names an installation's queues: PREFIX.deployments and PREFIX.jobs, each task
# routed there by its name (console/workers.py); tests run on a prefix of their own.
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_QUEUE", "console")
CELERY_TASK_ROUTES = ("console.workers.route_task",)
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_TASK_IGNORE_RESULT = True

# The parts the console administers. The managed server reads its own variables
# (MANAGED_DATABASE_URL, MANAGED_PG_PORT) in serverparams.server.get_managed_server().
INFERENCE_URL = inference_url()
INFERENCE_TOKEN = inference_token()
# The sidecar beside this worker, which embeds the batches of jobs set to embed on the workers
# (console/jobs/onworker.py); by default the console's own. Each worker machine runs one.
WORKER_INFERENCE_URL = env_str("WORKER_INFERENCE_URL", "").rstrip("/") or INFERENCE_URL
WORKER_INFERENCE_TOKEN = os.environ.get("WORKER_INFERENCE_TOKEN", INFERENCE_TOKEN)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    # One line per HTTP call to the sidecar is noise at INFO, and so are django-axes' four
    # lines per sign-in; its failures and lockouts are warnings.
    "loggers": {
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "axes": {"level": "WARNING"},
    },
}
