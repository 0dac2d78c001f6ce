"""Shared fixtures. Area fixtures live in tests/<area>/conftest.py and tests/fixtures/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from tests.fixtures.tinymodel import make_tiny_model

# In CI the property-based tests draw the same examples every run, so that a red build points
# at a change and not at a new random draw; locally they explore afresh each time.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# Fixtures shared across areas: the sidecar process, the managed server, the real model.
pytest_plugins = [
    "tests.fixtures.sidecar",
    "tests.fixtures.pg",
    "tests.fixtures.realmodel",
    "tests.fixtures.fakehub",
]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated tiny model repository (mean pooling), shared by the session."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_cls_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with CLS pooling."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-cls-model"), pooling="cls", seed=1)


@pytest.fixture(scope="session")
def session_var_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VAR_DIR of the test session's own, so tests never touch the developer's var/."""
    path = tmp_path_factory.mktemp("var")
    os.environ["VAR_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def django_db_modify_db_settings(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The console's test database is a file rather than memory, so that the Celery worker
    processes some tests start share it."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        path = tmp_path_factory.mktemp("console-db") / "console-test.sqlite3"
        database.setdefault("TEST", {})["NAME"] = str(path)
