"""Configuration from environment variables, with working defaults.

Every process of the project (sidecar, console, worker, CLI) reads its configuration through
these helpers so that one variable means the same thing everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    value = os.environ.get(name, "")
    return value if value.strip() else default


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value.strip():
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"environment variable {name} must be a boolean (true/false), got {value!r}")


def var_dir() -> Path:
    """Root of all runtime state (databases, model store, registry, logs)."""
    path = Path(env_str("VAR_DIR", str(PROJECT_ROOT / "var")))
    if not path.is_absolute():
        path = PROJECT_ROOT / path
    return path


def log_dir(root: Path | None = None) -> Path:
    """Where every process of the project writes its log: ``log`` under ``root`` (default:
    VAR_DIR)."""
    return (var_dir() if root is None else root) / "log"


def models_dir() -> Path:
    return var_dir() / "models"


def inference_url() -> str:
    """Where the sidecar listens, as seen by its clients (console, SQL module)."""
    return env_str("INFERENCE_URL", "http://127.0.0.1:8090").rstrip("/")


def inference_socket() -> Path | None:
    """A Unix socket the sidecar also listens on (``INFERENCE_SOCKET``; unset or empty: none),
    for a PostgreSQL server on the same machine: a lone query skips TCP's loopback stack."""
    raw = env_str("INFERENCE_SOCKET", "")
    return Path(raw) if raw else None


def module_service_url() -> str:
    """Where the SQL module of the managed server reaches the sidecar: its Unix socket when it
    has one (``INFERENCE_SOCKET``), else ``INFERENCE_URL``."""
    socket_path = inference_socket()
    return f"unix:{socket_path}" if socket_path else inference_url()


def inference_token() -> str:
    """Optional bearer token; empty means no authentication."""
    return os.environ.get("INFERENCE_TOKEN", "")
