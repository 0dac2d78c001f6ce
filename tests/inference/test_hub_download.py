"""Deploying from the Hugging Face Hub over HTTP: a FakeHub on 127.0.0.1 stands in for the Hub
(HF_ENDPOINT points at it) and huggingface_hub downloads from it for real."""

from __future__ import annotations

import fnmatch
import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import constants

from inference.catalog import Catalog, load_catalog
from inference.engine import EmbeddingModel
from inference.provision import DeployResult, ProgressEvent, ProvisionError, deploy
from inference.store import ModelStore
from tests.fixtures.fakehub import (
    E5_REPO,
    FakeHub,
    fake_hub,  # noqa: F401
    publish_e5_repo,
)
from tests.fixtures.realmodel import TINY_URI, tiny_entry, write_catalog

ONNX = "onnx/model.onnx"
METADATA = f"/api/models/{E5_REPO}/revision/main"
FILE_LIST = f"/api/models/{E5_REPO}/tree/main"


@pytest.fixture
def hub(fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:  # noqa: F811
    """The fake hub serving an e5-like repository, with HF_ENDPOINT pointing at it."""
    publish_e5_repo(fake_hub, tmp_path / "hub-repo")
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.endpoint)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return fake_hub


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    """The tiny model, published on the Hub as intfloat/multilingual-e5-small."""
    entry = tiny_entry(default_source="hub", sources={"hub": {"repo_id": E5_REPO, "onnx": ONNX}})
    return load_catalog(write_catalog(tmp_path / "catalog.json", entry))


def wanted_files(hub: FakeHub, catalog: Catalog) -> list[str]:
    """The repository files a deployment takes: those its allow-patterns match."""
    patterns = catalog.get(TINY_URI).hub.allow_patterns
    return sorted(
        p for p in hub.repos[E5_REPO].files if any(fnmatch.fnmatch(p, x) for x in patterns)
    )


def deploy_into(
    store: Path, catalog: Catalog, cache: Path, events: list[ProgressEvent] | None = None
) -> DeployResult:
    return deploy(
        TINY_URI,
        catalog=catalog,
        store=ModelStore(store),
        cache_dir=cache,
        progress=events.append if events is not None else None,
    )


def cache_blob(cache: Path, commit: str, rel: str) -> Path:
    snapshot = cache / f"models--{E5_REPO.replace('/', '--')}" / "snapshots" / commit
    return (snapshot / rel).resolve()


def test_hub_deployment_downloads_over_http_checks_the_published_hashes_and_embeds(
    hub: FakeHub, catalog: Catalog, tmp_path: Path, tiny_engine: EmbeddingModel
) -> None:
    cache = tmp_path / "hf-cache"
    events: list[ProgressEvent] = []
    result = deploy_into(tmp_path / "models", catalog, cache, events)

    repo = hub.repos[E5_REPO]
    wanted = wanted_files(hub, catalog)
    # The file list first (its sizes make the progress's total), then the metadata, then
    # each allowed file exactly once; nothing else leaves the hub.
    assert [r.path for r in hub.requests[:3]] == [
        FILE_LIST,
        METADATA,
        f"/api/models/{E5_REPO}/tree/{repo.commit}",
    ]
    assert sorted(hub.downloaded(E5_REPO)) == wanted
    assert {"model.safetensors", "pytorch_model.bin", "onnx/tokenizer.json"}.isdisjoint(
        hub.downloaded(E5_REPO)
    )
    # LFS files came from the CDN through the Hub's redirect, the others from the Hub itself.
    assert {r.server for r in hub.downloads()} == {"hub", "cdn"}

    # Byte progress rises to the total of what was downloaded.
    fetch = [(e.done, e.total) for e in events if e.step == "fetch" and e.kind == "progress"]
    total = sum(len(repo.files[p].data) for p in wanted)
    assert len(fetch) >= 2
    assert [d for d, _ in fetch] == sorted(d for d, _ in fetch)
    # The total is the whole download from the first report on, not a sum that grows.
    assert {t for _, t in fetch} == {total}
    assert fetch[-1] == (total, total)

    # The cache names each file by the hash the hub published, and every copy was checked.
    published = hub.published(E5_REPO)
    for rel in wanted:
        assert cache_blob(cache, repo.commit, rel).name == published[rel][1]
    assert published[ONNX][0] == "sha256" and published["config.json"][0] == "git-sha1"
    verified = [e.message for e in events if e.step == "verify" and e.kind == "done"]
    assert verified == [f"{len(wanted)} files match the hashes their source published"]

    stored = result.stored
    assert stored.manifest["source"] == {"kind": "hub", "ref": E5_REPO, "revision": repo.commit}
    assert stored.verify() == []
    texts = ["a red car", "the city by the river"]
    vectors = EmbeddingModel.from_stored(stored, {}).embed(texts).vectors
    np.testing.assert_allclose(vectors, tiny_engine.embed(texts).vectors, atol=1e-5)


def test_a_download_cut_mid_file_resumes_with_a_range_request(
    hub: FakeHub, catalog: Catalog, tmp_path: Path
) -> None:
    # huggingface_hub keeps what it receives in pieces of DOWNLOAD_CHUNK_SIZE (10 MiB): a cut
    # resumes from the last whole piece, so only a file larger than one piece shows a Range.
    piece = constants.DOWNLOAD_CHUNK_SIZE
    big = np.random.default_rng(0).bytes(piece + 2 * 1024 * 1024)
    folder = hub.repos[E5_REPO].folder
    (folder / "sentencepiece.bpe.model").write_bytes(big)
    repo = hub.add_repo(E5_REPO, folder)
    hub.fail_after_bytes = piece + 1024 * 1024
    hub.fail_path = "sentencepiece.bpe.model"
    events: list[ProgressEvent] = []

    result = deploy_into(tmp_path / "models", catalog, tmp_path / "hf-cache", events)

    big_sha256 = hashlib.sha256(big).hexdigest()
    gets = [r for r in hub.downloads() if r.path.endswith(big_sha256)]
    assert [(r.range, r.status) for r in gets] == [(None, 200), (f"bytes={piece}-", 206)]
    stored = result.stored.path / "sentencepiece.bpe.model"
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == big_sha256
    assert result.stored.verify() == []
    total = sum(len(repo.files[p].data) for p in wanted_files(hub, catalog))
    fetch = [(e.done, e.total) for e in events if e.step == "fetch" and e.kind == "progress"]
    assert fetch[-1] == (total, total)  # the resumed bytes are not counted twice


def test_a_hub_that_keeps_cutting_a_download_fails_the_deployment_and_a_retry_succeeds(
    hub: FakeHub, catalog: Catalog, tmp_path: Path
) -> None:
    hub.fail_after_bytes = 5000
    hub.failures = 100  # more than huggingface_hub retries
    hub.fail_path = ONNX
    store = tmp_path / "models"
    cache = tmp_path / "hf-cache"

    with pytest.raises(ProvisionError) as caught:
        deploy_into(store, catalog, cache)

    message = str(caught.value)
    assert "cannot fetch tiny-model:v1 from the Hugging Face Hub: peer closed connection" in message
    assert "To deploy without the Hub" in message
    assert ModelStore(store).get(TINY_URI) is None
    assert hub.downloaded(E5_REPO).count(ONNX) > 1  # huggingface_hub retried before giving up

    hub.failures = 0
    hub.clear_log()
    result = deploy_into(store, catalog, cache)
    assert hub.downloaded(E5_REPO) == [ONNX]  # the other files were kept in the cache
    assert result.stored.verify() == []


def test_a_second_deployment_with_the_same_cache_downloads_no_file(
    hub: FakeHub, catalog: Catalog, tmp_path: Path
) -> None:
    cache = tmp_path / "hf-cache"
    deploy_into(tmp_path / "first", catalog, cache)
    hub.clear_log()

    result = deploy_into(tmp_path / "second", catalog, cache)

    # Only metadata: the file list (for the progress's total) and the revision's commit.
    assert [(r.method, r.path) for r in hub.requests] == [("GET", FILE_LIST), ("GET", METADATA)]
    assert result.changed and result.stored.verify() == []


def test_offline_mode_deploys_from_a_warm_cache_without_touching_the_hub(
    hub: FakeHub, catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hf-cache"
    deploy_into(tmp_path / "first", catalog, cache)
    hub.clear_log()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    result = deploy_into(tmp_path / "second", catalog, cache)

    assert hub.requests == [] and hub.connections == 0
    assert result.stored.manifest["source"]["revision"] == hub.repos[E5_REPO].commit
    assert result.stored.verify() == []


def test_offline_mode_with_a_cold_cache_fails_at_once_saying_how_to_deploy_a_local_copy(
    hub: FakeHub, catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ProvisionError) as caught:
        deploy_into(tmp_path / "models", catalog, tmp_path / "hf-cache")
    assert time.monotonic() - started < 2
    message = str(caught.value)
    assert "HF_HUB_OFFLINE is set" in message
    assert f"hf download {E5_REPO}" in message
    assert (
        "python -m inference deploy tiny-model:v1 --source /path/to/multilingual-e5-small"
        in message
    )
    assert hub.requests == [] and hub.connections == 0


def test_a_hub_file_that_does_not_match_its_published_hash_is_refused_and_not_kept(
    hub: FakeHub, catalog: Catalog, tmp_path: Path
) -> None:
    hub.corrupt = {ONNX, "config.json"}
    store = tmp_path / "models"
    cache = tmp_path / "hf-cache"

    with pytest.raises(ProvisionError) as caught:
        deploy_into(store, catalog, cache)

    message = str(caught.value)
    assert f"{ONNX} from hub {E5_REPO} does not match its published sha256" in message
    assert f"config.json from hub {E5_REPO} does not match its published git-sha1" in message
    assert "removed from the Hugging Face cache" in message
    assert ModelStore(store).get(TINY_URI) is None
    assert not ModelStore(store).model_dir(TINY_URI).exists()

    # Once the hub serves the right bytes, the next deployment fetches the two files again
    # instead of reusing the bad copies from the cache.
    hub.corrupt = set()
    hub.clear_log()
    result = deploy_into(store, catalog, cache)
    assert sorted(hub.downloaded(E5_REPO)) == ["config.json", ONNX]
    assert result.stored.verify() == []
