"""The sidecar's model registry: which model URIs exist, where their files are, which are loaded.

Registrations persist as JSON in ``VAR_DIR/sidecar/registry.json`` (written aside, then renamed,
so a crash never leaves half a file). Each URI gets an integer id once; the id survives restarts
and re-registering the same URI with the same files returns it again.

A registered ``model_path`` is one of:

* a model-store directory (``manifest.json``, see docs/architecture.md): config, license, source,
  file hashes and the ONNX file of each precision come from the manifest;
* a Hugging Face / sentence-transformers directory (``config.json``, ``tokenizer.json`` and
  ``onnx/model.onnx`` or ``model.onnx``): config from its files, hashes computed on registration;
* an ``.onnx`` file, with ``tokenizer_path`` naming the directory of its tokenizer and configs
  (without it, the file's directory and its parent are tried).

Nothing here knows about HTTP; the app maps the exceptions to status codes.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inference import layout
from inference.catalog import ModelURIError, parse_uri
from inference.modelconfig import (
    ModelConfig,
    ModelConfigError,
    RerankConfig,
    config_from_manifest,
    read_config,
)
from inference.statefile import write_json_atomic
from inference.store import PRECISIONS, sha256_file

REGISTRY_FORMAT = 1


class RegistryError(ValueError):
    """Base of the registry's errors; the message says what was wrong and what to do."""


class InvalidModelURI(RegistryError, ModelURIError):
    """catalog.parse_uri's refusal, as one of the registry's errors."""


class ModelPathError(RegistryError):
    """The model path does not exist or does not hold a model the engine can load."""


class UnknownModel(RegistryError):
    """The one "not registered" error: the sidecar answers it with 404 model_not_found."""

    def __init__(self, uri: str, registered: list[str]) -> None:
        known = ", ".join(registered) if registered else "none"
        super().__init__(
            f"model {uri!r} is not registered (registered models: {known}); deploy it from the "
            "console, or register it with POST /models or SQL azure_local_ai.model_register()"
        )
        self.uri = uri
        self.registered = registered


class RegistrationConflict(RegistryError):
    pass


def check_uri(uri: str) -> str:
    """Return ``uri`` if it looks like ``name:version``, else raise InvalidModelURI."""
    try:
        parse_uri(uri)
    except ModelURIError as exc:
        raise InvalidModelURI(str(exc)) from None
    return uri


@dataclass
class ModelSource:
    """Everything needed to load a model, resolved from a registered path."""

    onnx_path: Path
    tokenizer_dir: Path
    config: ModelConfig | RerankConfig
    manifest: dict[str, Any] | None = None
    # Files that decide the output, relative to ``root`` (absolute when outside it).
    files: list[Path] = field(default_factory=list)
    root: Path = Path()

    def metadata(self) -> dict[str, Any]:
        """Descriptive metadata: the manifest's where there is one, else what the files say."""
        manifest = self.manifest or {}
        config = self.config
        return {
            "kind": config.kind,
            **config.to_manifest(),
            "license": manifest.get("license") or _readme_license(self.tokenizer_dir),
            "model_card": manifest.get("model_card"),
            "source": manifest.get("source") or {"kind": "local", "ref": str(self.root)},
            "quality": manifest.get("quality"),
            "memory_mb": manifest.get("memory_mb"),
        }

    def file_hashes(self) -> dict[str, str]:
        """path -> sha256; from the manifest when there is one (the store verified them)."""
        if self.manifest and isinstance(self.manifest.get("files"), dict):
            return dict(self.manifest["files"])
        hashes: dict[str, str] = {}
        for path in self.files:
            try:
                key = str(path.relative_to(self.root))
            except ValueError:
                key = str(path)
            hashes[key] = sha256_file(path)
        return hashes


def _readme_license(directory: Path) -> dict[str, Any] | None:
    """The ``license:`` of a Hugging Face README's front matter, if any."""
    readme = directory / "README.md"
    if not readme.is_file():
        return None
    lines = readme.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    for line in lines[1:]:
        if line.strip() == "---":
            break
        key, _, value = line.partition(":")
        if key.strip() == "license" and value.strip():
            return {"name": value.strip().strip("'\""), "url": None}
    return None


def _onnx_with_data(onnx_path: Path) -> list[Path]:
    """The ONNX file and its external-data files, which large exports keep beside it."""
    extra = [onnx_path.with_name(onnx_path.name + suffix) for suffix in ("_data", ".data")]
    return [onnx_path, *[p for p in extra if p.is_file()]]


def _config(directory: Path) -> ModelConfig | RerankConfig:
    try:
        return read_config(directory)
    except ModelConfigError as exc:
        raise ModelPathError(f"cannot read the model's configuration: {exc}") from None


def _require_tokenizer(directory: Path) -> None:
    if not (directory / "tokenizer.json").is_file():
        raise ModelPathError(
            f"{directory} has no tokenizer.json; the engine needs a fast tokenizer "
            "(save one with transformers' tokenizer.save_pretrained())"
        )


def resolve_model(
    model_path: str | Path, tokenizer_path: str | Path | None = None, precision: str = "fp32"
) -> ModelSource:
    """Work out the ONNX file, tokenizer directory and config of a model path.

    Raises ModelPathError naming what is missing; reads only small files (no hashing).
    """
    if precision not in PRECISIONS:
        raise ModelPathError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    path = Path(model_path).expanduser()
    if not path.is_absolute():
        raise ModelPathError(f"model_path must be an absolute path, got {str(model_path)!r}")
    if not path.exists():
        raise ModelPathError(
            f"model_path {str(path)!r} does not exist (on the machine running the inference "
            "sidecar); deploy the model first or give the path of a model directory"
        )
    tokenizer_dir = Path(tokenizer_path).expanduser() if tokenizer_path else None
    if tokenizer_dir is not None and not tokenizer_dir.is_dir():
        raise ModelPathError(f"tokenizer_path {str(tokenizer_dir)!r} is not a directory")

    if path.is_dir() and (path / "manifest.json").is_file():
        return _resolve_store_dir(path, tokenizer_dir, precision)
    if path.is_dir():
        return _resolve_hf_dir(path, tokenizer_dir, precision)
    if path.suffix == ".onnx":
        return _resolve_onnx_file(path, tokenizer_dir)
    raise ModelPathError(
        f"model_path {str(path)!r} is neither a model directory nor an .onnx file; give a "
        "model-store directory (with manifest.json), a Hugging Face model directory, or an "
        ".onnx file together with tokenizer_path"
    )


def _resolve_store_dir(path: Path, tokenizer_dir: Path | None, precision: str) -> ModelSource:
    manifest_path = path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelPathError(f"{manifest_path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise ModelPathError(f"{manifest_path} must hold a JSON object")
    try:
        config = config_from_manifest(manifest)
    except ModelConfigError as exc:
        raise ModelPathError(f"{manifest_path}: {exc}") from None
    onnx_files = manifest.get("onnx") or {}
    relative = onnx_files.get(precision) if isinstance(onnx_files, dict) else None
    if not relative:
        available = ", ".join(onnx_files) if isinstance(onnx_files, dict) and onnx_files else "none"
        hint = (
            " (the int8 variant exists only when it passed its quality gate at deployment)"
            if precision == "int8"
            else ""
        )
        raise ModelPathError(
            f"{manifest_path} lists no {precision} ONNX file{hint}; available: {available}"
        )
    onnx_path = path / relative
    if not onnx_path.is_file():
        raise ModelPathError(f"{onnx_path} named by {manifest_path} is missing; redeploy the model")
    tokenizer = tokenizer_dir or path / str(manifest.get("tokenizer") or ".")
    _require_tokenizer(tokenizer)
    return ModelSource(onnx_path, tokenizer, config, manifest=manifest, root=path)


def _resolve_hf_dir(path: Path, tokenizer_dir: Path | None, precision: str) -> ModelSource:
    candidates = [path / name for name in layout.ONNX_FILES[precision]]
    onnx_path = next((c for c in candidates if c.is_file()), None)
    if onnx_path is None:
        looked = ", ".join(layout.ONNX_FILES[precision])
        raise ModelPathError(
            f"{path} has no {precision} ONNX file (looked for {looked}); deploy the model with "
            "`python -m inference deploy`, which exports it to ONNX, or register an .onnx file "
            "with tokenizer_path"
        )
    tokenizer = tokenizer_dir or path
    _require_tokenizer(tokenizer)
    config = _config(tokenizer if (tokenizer / "config.json").is_file() else path)
    files = _onnx_with_data(onnx_path)
    for root in dict.fromkeys((path, tokenizer)):
        files += [root / name for name in layout.CONFIG_FILES if (root / name).is_file()]
    return ModelSource(onnx_path, tokenizer, config, files=files, root=path)


def _resolve_onnx_file(path: Path, tokenizer_dir: Path | None) -> ModelSource:
    if tokenizer_dir is None:
        # An export usually sits in the repository (model.onnx) or in its onnx/ folder.
        tokenizer_dir = next(
            (d for d in (path.parent, path.parent.parent) if (d / "tokenizer.json").is_file()),
            None,
        )
        if tokenizer_dir is None:
            raise ModelPathError(
                f"no tokenizer.json next to {path} or in its parent directory; give "
                "tokenizer_path, the directory holding the model's tokenizer and config files"
            )
    _require_tokenizer(tokenizer_dir)
    config = _config(tokenizer_dir)
    files = _onnx_with_data(path) + [
        tokenizer_dir / name for name in layout.CONFIG_FILES if (tokenizer_dir / name).is_file()
    ]
    return ModelSource(path, tokenizer_dir, config, files=files, root=path.parent)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Registry:
    """Registered models, persisted atomically; safe to use from several threads.

    An entry holds the registration (``id``, ``model_uri``, ``model_path``, ``tokenizer_path``,
    ``precision``, ``registered_at``), the metadata read on registration, and ``loaded``: whether
    the model should be loaded, so that a restart brings back what was loaded before.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._next_id = 1
        self._entries: dict[str, dict[str, Any]] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                self._entries = {e["model_uri"]: e for e in data["models"]}
                self._next_id = int(data["next_id"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise RegistryError(
                    f"the model registry {path} is damaged ({exc}); move it aside and register "
                    "the models again"
                ) from None

    def _save(self) -> None:
        data = {
            "format": REGISTRY_FORMAT,
            "next_id": self._next_id,
            "models": sorted(self._entries.values(), key=lambda e: e["id"]),
        }
        write_json_atomic(self.path, data)

    def uris(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in sorted(self._entries.values(), key=lambda e: e["id"])]

    def get(self, uri: str) -> dict[str, Any]:
        """The entry of ``uri``, or UnknownModel naming the registered ones."""
        with self._lock:
            entry = self._entries.get(uri)
            if entry is None:
                raise UnknownModel(uri, sorted(self._entries))
            return dict(entry)

    def find(
        self, uri: str, model_path: str | Path, tokenizer_path: str | Path | None, precision: str
    ) -> dict[str, Any] | None:
        """The existing entry for exactly this registration, None if ``uri`` is free.

        Raises RegistrationConflict if ``uri`` is registered with other files.
        """
        wanted = _registration(model_path, tokenizer_path, precision)
        with self._lock:
            entry = self._entries.get(uri)
            if entry is None:
                return None
            have = (entry["model_path"], entry["tokenizer_path"], entry["precision"])
            if have != wanted:
                raise RegistrationConflict(
                    f"model {uri!r} is already registered with model_path {have[0]!r}"
                    + (f", tokenizer_path {have[1]!r}" if have[1] else "")
                    + f" and precision {have[2]}; unregister it first (DELETE /models/{uri} or "
                    "SQL azure_local_ai.model_unregister()) or register under another URI"
                )
            return dict(entry)

    def add(
        self,
        uri: str,
        model_path: str | Path,
        tokenizer_path: str | Path | None,
        precision: str,
        metadata: dict[str, Any],
        *,
        loaded: bool,
    ) -> dict[str, Any]:
        """Register ``uri`` (or return its entry if registered identically) and persist."""
        check_uri(uri)
        existing = self.find(uri, model_path, tokenizer_path, precision)
        if existing is not None:
            return existing
        path, tokenizer, precision = _registration(model_path, tokenizer_path, precision)
        with self._lock:
            if uri in self._entries:  # registered meanwhile by another thread
                return dict(self._entries[uri])
            entry = {
                "id": self._next_id,
                "model_uri": uri,
                "model_path": path,
                "tokenizer_path": tokenizer,
                "precision": precision,
                "loaded": loaded,
                "registered_at": _now(),
                **metadata,
            }
            self._entries[uri] = entry
            self._next_id += 1
            self._save()
            return dict(entry)

    def set_loaded(self, uri: str, loaded: bool) -> None:
        """Record whether ``uri`` should be loaded (also after a restart)."""
        with self._lock:
            entry = self._entries.get(uri)
            if entry is None:
                raise UnknownModel(uri, sorted(self._entries))
            if entry["loaded"] != loaded:
                entry["loaded"] = loaded
                self._save()

    def remove(self, uri: str) -> dict[str, Any]:
        with self._lock:
            entry = self._entries.pop(uri, None)
            if entry is None:
                raise UnknownModel(uri, sorted(self._entries))
            self._save()
            return entry


def _registration(
    model_path: str | Path, tokenizer_path: str | Path | None, precision: str
) -> tuple[str, str | None, str]:
    """The normalised identity of a registration: absolute paths and the precision."""
    path = str(Path(model_path).expanduser().resolve())
    tokenizer = str(Path(tokenizer_path).expanduser().resolve()) if tokenizer_path else None
    return path, tokenizer, precision
