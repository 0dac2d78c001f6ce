"""The model store: ``<root>/<name>/<version>/`` with the files and a ``manifest.json``.

A model directory is written aside (``<root>/<name>/.staging-<version>-*``), every file's
sha256 goes into the manifest, the staging directory is verified against it and only then
renamed into place, so a model directory that exists is complete. Replacing a version renames
the old one aside, the new one in, and deletes the old one. Deployments of one model are
serialised by a lock file (``<root>/<name>/.lock-<version>``); taking the lock also clears
what a process that died mid-install left behind. The manifest format is in
docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.catalog import parse_uri
from inference.config import models_dir

if TYPE_CHECKING:
    from inference.modelconfig import ModelConfig, RerankConfig

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
PRECISIONS = ("fp32", "int8")
STAGING_PREFIX = ".staging-"
_REPLACED_PREFIX = ".replaced-"
_CHUNK = 1024 * 1024

# done bytes, total bytes
ByteProgress = Callable[[int, int], None]


class StoreError(RuntimeError):
    """The model store cannot do what was asked; the message says why and what to do."""


def digest_file(
    path: Path, digest: hashlib._Hash, progress: Callable[[int], None] | None = None
) -> str:
    """``digest`` fed with the file's bytes, in hex; ``progress`` receives each chunk's size."""
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """The file's sha256 (hex); ``progress`` receives the size of each chunk read."""
    return digest_file(path, hashlib.sha256(), progress)


def _files(directory: Path) -> list[Path]:
    """Every regular file under ``directory`` except the manifest, sorted."""
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and p.relative_to(directory) != Path(MANIFEST)
    )


def hash_tree(directory: Path, progress: ByteProgress | None = None) -> dict[str, str]:
    """``relative posix path -> sha256`` for every file under ``directory`` but the manifest."""
    files = _files(directory)
    advance = _byte_counter(sum(p.stat().st_size for p in files), progress)
    return {p.relative_to(directory).as_posix(): sha256_file(p, advance) for p in files}


def _byte_counter(total: int, progress: ByteProgress | None) -> Callable[[int], None]:
    """A chunk callback for ``sha256_file`` that reports the running total to ``progress``."""
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    return advance


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(directory: Path) -> None:
    # The rename that publishes a model must not reach the disk before its files do.
    for path in [*_files(directory), directory / MANIFEST]:
        if path.exists():
            _fsync(path)
    _fsync(directory)


@dataclass
class StoredModel:
    """A complete model directory of the store."""

    uri: str
    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.manifest.get("name") or parse_uri(self.uri)[0])

    @property
    def version(self) -> str:
        return str(self.manifest.get("version") or parse_uri(self.uri)[1])

    @property
    def precisions(self) -> list[str]:
        """Precisions with an ONNX file, fp32 first (int8 only if it passed its quality gate)."""
        onnx = self.manifest.get("onnx") or {}
        return [p for p in PRECISIONS if onnx.get(p)]

    def onnx_path(self, precision: str = "fp32") -> Path:
        relative = (self.manifest.get("onnx") or {}).get(precision)
        if not relative:
            available = ", ".join(self.precisions) or "none"
            hint = (
                f"; deploy it with --precision int8 (python -m inference deploy {self.uri} "
                "--precision int8)"
                if precision == "int8"
                else ""
            )
            raise StoreError(
                f"{self.uri} has no {precision} ONNX file (available: {available}){hint}"
            )
        return self.path / relative

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / str(self.manifest.get("tokenizer") or ".")

    @property
    def config(self) -> ModelConfig | RerankConfig:
        from inference.modelconfig import config_from_manifest

        return config_from_manifest(self.manifest)

    @property
    def size_bytes(self) -> int:
        return sum(
            (self.path / rel).stat().st_size
            for rel in (self.manifest.get("files") or {})
            if (self.path / rel).is_file()
        )

    def verify(self, progress: ByteProgress | None = None) -> list[str]:
        """Recheck every file against the manifest; the problems found (empty: all good)."""
        return verify_directory(self.path, self.manifest, progress)


def verify_directory(
    directory: Path, manifest: dict[str, Any], progress: ByteProgress | None = None
) -> list[str]:
    """Problems of ``directory`` against ``manifest``: missing, changed or unlisted files."""
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not listed:
        return [f"{directory / MANIFEST} lists no files"]
    problems = []
    present = {p.relative_to(directory).as_posix(): p for p in _files(directory)}
    advance = _byte_counter(
        sum(p.stat().st_size for rel, p in present.items() if rel in listed), progress
    )
    for rel, expected in sorted(listed.items()):
        path = present.get(rel)
        if path is None:
            problems.append(f"{rel} is missing")
        elif sha256_file(path, advance) != expected:
            problems.append(f"{rel} does not match its sha256 in the manifest (changed or corrupt)")
    problems += [
        f"{rel} is not listed in the manifest" for rel in sorted(set(present) - set(listed))
    ]
    for precision, rel in (manifest.get("onnx") or {}).items():
        if rel and rel not in listed:
            problems.append(f"the {precision} ONNX file {rel} is not among the manifest's files")
    return problems


def verify_for_load(directory: Path) -> list[str]:
    """Before a model-store directory is loaded: its files against the manifest's sha256, so
    that a file changed since it was deployed is refused rather than served (empty: all good,
    or not a model-store directory)."""
    manifest = _read_manifest(directory) if directory.is_dir() else None
    return [] if manifest is None else verify_directory(directory, manifest)


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(
            f"{path} cannot be read ({exc}); remove {directory} and deploy the model again"
        ) from None
    if not isinstance(data, dict):
        raise StoreError(f"{path} must hold a JSON object; remove {directory} and redeploy")
    return data


class ModelStore:
    """Models under ``root`` (by default ``VAR_DIR/models``)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else models_dir()

    def model_dir(self, uri: str) -> Path:
        name, version = parse_uri(uri)
        return self.root / name / version

    def get(self, uri: str) -> StoredModel | None:
        """The complete model ``uri``, or None when it is not in the store."""
        directory = self.model_dir(uri)
        manifest = _read_manifest(directory) if directory.is_dir() else None
        return StoredModel(uri, directory, manifest) if manifest is not None else None

    def list(self) -> list[StoredModel]:
        """Every complete model, sorted by URI; staging and half-replaced directories are not."""
        models = []
        if not self.root.is_dir():
            return models
        for name_dir in sorted(self.root.iterdir()):
            if not name_dir.is_dir() or name_dir.name.startswith("."):
                continue
            for version_dir in sorted(name_dir.iterdir()):
                if not version_dir.is_dir() or version_dir.name.startswith("."):
                    continue
                uri = f"{name_dir.name}:{version_dir.name}"
                with contextlib.suppress(StoreError, ValueError):
                    if (model := self.get(uri)) is not None:
                        models.append(model)
        return models

    @contextlib.contextmanager
    def lock(self, uri: str) -> Iterator[None]:
        """Hold the model's deployment lock; refuse at once if another process holds it."""
        name, version = parse_uri(uri)
        parent = self.root / name
        parent.mkdir(parents=True, exist_ok=True)
        with open(parent / f".lock-{version}", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(
                    f"another deployment of {uri} is in progress; wait for it to finish"
                ) from None
            try:
                self._recover(uri)
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _recover(self, uri: str) -> None:
        """Clear what a process that died mid-install left (called under the lock)."""
        target = self.model_dir(uri)
        version = target.name
        for leftover in sorted(target.parent.glob(f"{_REPLACED_PREFIX}{version}-*")):
            # Died between renaming the old version aside and the new one in: the old one
            # was complete, so it goes back.
            if not target.exists() and (leftover / MANIFEST).is_file():
                os.rename(leftover, target)
            else:
                shutil.rmtree(leftover, ignore_errors=True)
        for leftover in target.parent.glob(f"{STAGING_PREFIX}{version}-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    @contextlib.contextmanager
    def staging(self, uri: str) -> Iterator[Path]:
        """A fresh staging directory beside the model's target; removed on the way out unless
        ``install`` moved it into place. Use inside ``lock(uri)``."""
        target = self.model_dir(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{target.name}-", dir=target.parent))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def install(
        self,
        uri: str,
        staging: Path,
        manifest: dict[str, Any],
        progress: ByteProgress | None = None,
    ) -> StoredModel:
        """Hash every staged file into the manifest, verify, and rename into place.

        ``manifest`` holds the model-level fields; ``files``, ``format`` and ``created_at`` are
        filled in here. An existing version is replaced atomically.
        """
        target = self.model_dir(uri)
        if staging.parent != target.parent or not staging.name.startswith(STAGING_PREFIX):
            raise StoreError(f"{staging} is not a staging directory of {uri}")
        files = hash_tree(staging, progress)
        if not files:
            raise StoreError(f"nothing to install for {uri}: {staging} is empty")
        full = {
            "format": MANIFEST_FORMAT,
            **manifest,
            "uri": uri,
            "files": files,
            "created_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if not (full.get("onnx") or {}).get("fp32"):
            raise StoreError(f"the manifest of {uri} names no fp32 ONNX file")
        (staging / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
        problems = verify_directory(staging, full)
        if problems:
            raise StoreError(f"staged files of {uri} failed verification: {'; '.join(problems)}")
        _fsync_tree(staging)

        old = None
        if target.exists():
            old = Path(
                tempfile.mkdtemp(prefix=f"{_REPLACED_PREFIX}{target.name}-", dir=target.parent)
            )
            os.rename(target, old)  # replaces the empty directory mkdtemp made
        try:
            os.rename(staging, target)
        except OSError:
            if old is not None:
                os.rename(old, target)
            raise
        _fsync(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return StoredModel(uri, target, full)

    def remove(self, uri: str) -> bool:
        """Delete the model ``uri``; False if it was not in the store."""
        target = self.model_dir(uri)
        with self.lock(uri):
            if not target.exists():
                return False
            # Renamed to a staging name first: a crash before the delete finishes leaves
            # something _recover clears, never a half-deleted model directory.
            aside = Path(
                tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{target.name}-", dir=target.parent)
            )
            os.rename(target, aside)
            shutil.rmtree(aside, ignore_errors=True)
            return True
