"""The inference sidecar's runtime settings (threads, batching, limits), declared as data.

One declaration (``SETTINGS``) feeds validation, persistence, the HTTP API (``GET/PUT
/settings``; ``schema()`` is what ``?describe=1`` gives), SQL (``azure_local_ai.get_setting`` /
``set_setting``, which pass values as text) and the console form.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import psutil

from inference.catalog import URI_PATTERN
from inference.statefile import write_json_atomic


def usable_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def physical_cores() -> int:
    """Physical cores this process may use: hyper-threads share a core's matrix units, so
    ONNX Runtime gains nothing from a second thread per core."""
    return max(1, min(_machine_physical_cores() or usable_cpus(), usable_cpus()))


@cache
def _machine_physical_cores() -> int | None:
    # Read once: psutil parses /proc for it (about 0.1 ms), and /health asks for the layout.
    return psutil.cpu_count(logical=False)


# The automatic layout: sessions of AUTO_MAX_THREADS threads at most, at least two sessions
# from two cores on, plus (when there are several) one session of every core for lone requests.
# Measured with all-MiniLM-L6-v2 by bench/cores.py on a 16-core Xeon (AVX-512 VNNI, AMX): one
# session of 16 threads runs 2.9x as fast as one of 2 threads on documents where 8x is ideal
# (its matrix products scale 3.3x, its small operators barely: layer norms 1.1x). Of the
# layouts that fill 16 cores, 4 x 4 and 8 x 2 are the fastest, within 1% of each other (over
# 1 x 16: short texts +85%, passages +61%, documents +25% to +36% in two runs); 4 x 4 leads on
# documents and holds fewer copies of the weights; 16 x 1 falls behind again. On 2 cores, two
# sessions of one thread served 16 concurrent single-text clients 34% faster than one session
# of two threads, bulk requests as fast, but a lone query in 10.3 ms against 7.7: hence the
# lone-request session (on 16 cores a lone query took 2.4 to 3.1 ms whatever the layout).
AUTO_MAX_THREADS = 4


@dataclass(frozen=True)
class Layout:
    """How a loaded model uses the machine: ``sessions`` ONNX Runtime sessions of ``threads``
    intra-op threads each for batches, and ``lone_threads`` > 0 when one more session, of
    that many threads, runs lone requests (which find every batch session idle). Resolved from
    the settings (0: automatic) and the machine's cores."""

    sessions: int
    threads: int
    cores: int
    lone_threads: int = 0

    def describe(self) -> str:
        text = f"{_count(self.sessions, 'session')} {TIMES} {_count(self.threads, 'thread')}"
        if self.lone_threads:
            text += f" (and 1 {TIMES} {self.lone_threads} for lone requests)"
        return f"{text} on {_count(self.cores, 'core')}"


TIMES = "\u00d7"  # the multiplication sign, as people write a layout


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def layout(values: Mapping[str, Any], cores: int | None = None) -> Layout:
    """The layout the settings ``values`` give on a machine of ``cores`` physical cores."""
    cores = physical_cores() if cores is None else max(1, cores)
    sessions = int(values.get("engine_sessions") or 0)
    threads = int(values.get("intra_op_parallelism") or 0)
    if not sessions and not threads:
        threads = min(AUTO_MAX_THREADS, max(1, cores // 2))
        sessions = max(1, cores // threads)
    elif not sessions:
        sessions = max(1, cores // threads)
    elif not threads:
        threads = max(1, cores // sessions)
    lone = sessions * threads if sessions > 1 and values.get("lone_request_session", True) else 0
    return Layout(sessions=sessions, threads=threads, cores=cores, lone_threads=lone)


def check_layout(
    values: Mapping[str, Any], changed: Mapping[str, Any], cpus: int | None = None
) -> None:
    """Refuse a layout that asks for more busy threads than the machine has CPUs: ONNX Runtime's
    threads spin while they wait for each other, so an oversubscribed machine slows every run
    down many times over. The error is keyed by the setting that was changed."""
    cpus = usable_cpus() if cpus is None else cpus
    chosen = layout(values)
    total = chosen.sessions * chosen.threads
    if total <= cpus:
        return
    key = next(
        (k for k in ("engine_sessions", "intra_op_parallelism") if k in changed),
        "engine_sessions",
    )
    raise SettingsValidationError(
        {
            key: f"{_count(chosen.sessions, 'session')} {TIMES} {_count(chosen.threads, 'thread')} "
            f"is {total} threads, "
            f"more than the {cpus} CPUs this sidecar may use; lower engine_sessions or "
            "intra_op_parallelism (0 chooses both from the machine)"
        }
    )


@dataclass(frozen=True)
class Setting:
    """One setting: its key, type, default, bounds or choices, unit and a line of help."""

    key: str
    kind: str  # "int" | "bool" | "float" | "choice" | "uri" (a model URI, or "" for none)
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    unit: str = ""

    def parse(self, raw: Any) -> Any:
        """Turn a JSON value or SQL text into the setting's type, or raise SettingError."""
        if self.kind == "bool":
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.strip().lower() in {"true", "on", "1", "yes"}:
                return True
            if isinstance(raw, str) and raw.strip().lower() in {"false", "off", "0", "no"}:
                return False
            raise SettingError(self.key, f"must be true or false, got {raw!r}")
        if self.kind == "uri":
            if not isinstance(raw, str):
                raise SettingError(self.key, f"must be a model URI (name:version), got {raw!r}")
            text = raw.strip()
            if text and not URI_PATTERN.match(text):
                raise SettingError(
                    self.key,
                    f"must be a model URI (name:version, letters, digits, '.', '_', '-'), or "
                    f"empty for none, got {raw!r}",
                )
            return text
        if self.kind == "choice":
            if isinstance(raw, str) and raw.strip().lower() in self.choices:
                return raw.strip().lower()
            raise SettingError(self.key, f"must be one of {', '.join(self.choices)}, got {raw!r}")
        value: float
        if isinstance(raw, bool):
            raise SettingError(self.key, f"must be a number, got {raw!r}")
        if self.kind == "int":
            if isinstance(raw, int):
                value = raw
            elif isinstance(raw, float) and raw.is_integer():
                value = int(raw)
            elif isinstance(raw, str):
                try:
                    value = int(raw.strip())
                except ValueError:
                    raise SettingError(self.key, f"must be an integer, got {raw!r}") from None
            else:
                raise SettingError(self.key, f"must be an integer, got {raw!r}")
        else:
            try:
                value = float(raw) if isinstance(raw, int | float | str) else float("nan")
            except ValueError:
                raise SettingError(self.key, f"must be a number, got {raw!r}") from None
            if value != value:  # NaN
                raise SettingError(self.key, f"must be a number, got {raw!r}")
        unit = f" {self.unit}" if self.unit else ""
        if self.minimum is not None and value < self.minimum:
            raise SettingError(self.key, f"must be at least {self.minimum:g}{unit}, got {value:g}")
        if self.maximum is not None and value > self.maximum:
            raise SettingError(self.key, f"must be at most {self.maximum:g}{unit}, got {value:g}")
        return value

    def to_text(self, value: Any) -> str:
        if self.kind == "bool":
            return "true" if value else "false"
        if self.kind == "float":
            return f"{value:g}"
        return str(value)


class SettingError(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class SettingsValidationError(ValueError):
    """All problems of one update, keyed by setting; nothing of the update was applied."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "engine_sessions",
        "int",
        0,
        "ONNX Runtime sessions per loaded model. Dynamic batching feeds each its own runs, so "
        "several run at once; each holds its own copy of the model's weights. 0: chosen from "
        "the machine (sessions of up to 4 threads, two or more from two cores on).",
        minimum=0,
        maximum=64,
        unit="sessions",
    ),
    Setting(
        "lone_request_session",
        "bool",
        True,
        "With several sessions, keep one more that uses the threads of them all, for a lone "
        "request that finds them idle: a lone query runs as fast as on one session of every "
        "core. Costs one more copy of the model's weights.",
    ),
    Setting(
        "intra_op_parallelism",
        "int",
        0,
        "ONNX Runtime threads inside one operator, per session. 0: the machine's physical "
        "cores shared out among the sessions.",
        minimum=0,
        maximum=256,
        unit="threads",
    ),
    Setting(
        "inter_op_parallelism",
        "int",
        1,
        "ONNX Runtime threads across independent operators.",
        minimum=1,
        maximum=64,
        unit="threads",
    ),
    Setting(
        "spin_control",
        "bool",
        True,
        "Let idle ONNX Runtime threads spin: lower latency, but burns CPU while idle.",
    ),
    Setting(
        "max_batch_tokens",
        "int",
        1024,
        "Token budget of one model run (texts x padded length). Dynamic batching fills a "
        "batch up to this budget. Small budgets keep a run's activations in the CPU caches: "
        "on small encoders such as MiniLM and e5-small, 1024 runs about twice as fast per "
        "text as 16384.",
        minimum=64,
        maximum=1_048_576,
        unit="tokens",
    ),
    Setting(
        "max_batch_size",
        "int",
        64,
        "Most texts in one model run.",
        minimum=1,
        maximum=4096,
        unit="texts",
    ),
    Setting(
        "max_wait_ms",
        "float",
        2.0,
        "Dynamic batching window: how long a request may wait for others to share its run.",
        minimum=0,
        maximum=1000,
        unit="ms",
    ),
    Setting(
        "max_inputs_per_request",
        "int",
        10_000,
        "Most inputs accepted in one request.",
        minimum=1,
        maximum=1_000_000,
        unit="inputs",
    ),
    Setting(
        "max_request_bytes",
        "int",
        32 * 1024 * 1024,
        "Largest request body accepted, in bytes.",
        minimum=1024,
        maximum=1024 * 1024 * 1024,
        unit="bytes",
    ),
    Setting(
        "default_rerank_model",
        "uri",
        "",
        "The reranker (cross-encoder) that rank() in SQL and the rerank routes use when a "
        "request names none. Empty: every request must name its model.",
    ),
    Setting(
        "memory_arena",
        "bool",
        False,
        "Use ONNX Runtime's CPU memory arena. Off by default: with inputs of varied shapes the "
        "arena keeps its largest allocation and memory ratchets up.",
    ),
)

BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}


def defaults() -> dict[str, Any]:
    return {s.key: s.default for s in SETTINGS}


def schema() -> list[dict[str, Any]]:
    """Every setting as data, in declaration order: ``key, type, default, min, max, choices,
    help, unit`` (``GET /settings?describe=1``, and through it the console form)."""
    return [
        {
            "key": s.key,
            "type": s.kind,
            "default": s.default,
            "min": s.minimum,
            "max": s.maximum,
            "choices": list(s.choices),
            "help": s.help,
            "unit": s.unit,
        }
        for s in SETTINGS
    ]


def validate(updates: Mapping[str, Any]) -> dict[str, Any]:
    """Parse every update; raise SettingsValidationError naming each bad key, else the values."""
    errors: dict[str, str] = {}
    parsed: dict[str, Any] = {}
    for key, raw in updates.items():
        setting = BY_KEY.get(key)
        if setting is None:
            errors[key] = f"unknown setting; known settings: {', '.join(BY_KEY)}"
            continue
        try:
            parsed[key] = setting.parse(raw)
        except SettingError as exc:
            errors[key] = exc.message
    if errors:
        raise SettingsValidationError(errors)
    return parsed


class SettingsFile:
    """Settings persisted as JSON; writes are atomic and validated as a whole."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._values = defaults()
        if path.exists():
            stored = json.loads(path.read_text())
            if not isinstance(stored, dict):
                raise ValueError(f"it must hold a JSON object, not {type(stored).__name__}")
            # A file from an older version may hold keys that no longer exist: keep the rest.
            self._values.update(validate({k: v for k, v in stored.items() if k in BY_KEY}))

    def values(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._values)

    def update(self, updates: Mapping[str, Any]) -> dict[str, Any]:
        parsed = validate(updates)
        with self._lock:
            merged = {**self._values, **parsed}
            check_layout(merged, parsed)
            write_json_atomic(self.path, merged)
            self._values = merged
            return dict(merged)
