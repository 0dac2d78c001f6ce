"""The model store: atomic installs, verification, listing, replacement and removal."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from inference import store as store_module
from inference.catalog import CatalogError
from inference.store import ModelStore, StoreError

URI = "tiny-model:v1"
MANIFEST = {
    "name": "tiny-model",
    "version": "v1",
    "dimensions": 32,
    "max_tokens": 32,
    "pooling": "mean",
    "normalize": True,
    "prefixes": {"query": "", "passage": ""},
    "onnx": {"fp32": "onnx/model.onnx"},
    "tokenizer": ".",
}


def _stage(directory: Path, marker: str = "one") -> None:
    (directory / "onnx").mkdir()
    (directory / "onnx" / "model.onnx").write_bytes(b"graph " + marker.encode() * 1000)
    (directory / "tokenizer.json").write_text(json.dumps({"marker": marker}))
    (directory / "config.json").write_text("{}")


def _install(store: ModelStore, marker: str = "one") -> None:
    with store.lock(URI), store.staging(URI) as staging:
        _stage(staging, marker)
        store.install(URI, staging, dict(MANIFEST))


def _entries(store: ModelStore) -> list[str]:
    return sorted(
        p.name for p in (store.root / "tiny-model").iterdir() if not p.name.startswith(".lock")
    )


def test_install_records_every_file_sha256_and_serves_from_the_final_path(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _install(store)
    stored = store.get(URI)
    assert stored is not None
    assert stored.path == tmp_path / "tiny-model" / "v1"
    assert set(stored.manifest["files"]) == {"onnx/model.onnx", "tokenizer.json", "config.json"}
    expected = store_module.sha256_file(stored.path / "tokenizer.json")
    assert stored.manifest["files"]["tokenizer.json"] == expected
    assert stored.manifest["format"] == 1 and stored.manifest["uri"] == URI
    assert stored.onnx_path("fp32") == stored.path / "onnx" / "model.onnx"
    assert stored.tokenizer_dir == stored.path
    assert stored.config.dimensions == 32
    assert stored.verify() == []
    assert [m.uri for m in store.list()] == [URI]
    assert _entries(store) == ["v1"]


def test_failure_mid_install_leaves_neither_target_nor_staging(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)

    def fail_halfway(done: int, total: int) -> None:
        if done > 0:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"), store.lock(URI), store.staging(URI) as staging:
        _stage(staging)
        store.install(URI, staging, dict(MANIFEST), progress=fail_halfway)
    assert store.get(URI) is None
    assert store.list() == []
    assert _entries(store) == []


def test_failure_of_the_final_rename_keeps_the_old_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path)
    _install(store, "old")
    real_rename = os.rename

    def rename(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        if Path(src).name.startswith(".staging-"):
            raise OSError("simulated crash")
        real_rename(src, dst)

    monkeypatch.setattr(store_module.os, "rename", rename)
    with pytest.raises(OSError, match="simulated crash"):
        _install(store, "new")
    monkeypatch.setattr(store_module.os, "rename", real_rename)
    stored = store.get(URI)
    assert stored is not None and stored.verify() == []
    assert "old" in (stored.path / "tokenizer.json").read_text()
    assert _entries(store) == ["v1"]


def test_tampered_file_fails_verify(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _install(store)
    stored = store.get(URI)
    assert stored is not None
    (stored.path / "tokenizer.json").write_text('{"marker": "evil"}')
    (stored.path / "extra.bin").write_bytes(b"x")
    problems = stored.verify()
    assert any("tokenizer.json" in p and "sha256" in p for p in problems)
    assert any("extra.bin" in p for p in problems)
    (stored.path / "onnx" / "model.onnx").unlink()
    assert any("onnx/model.onnx is missing" in p for p in stored.verify())


def test_install_replaces_an_existing_version_and_leaves_no_leftovers(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _install(store, "old")
    _install(store, "new")
    stored = store.get(URI)
    assert stored is not None
    assert "new" in (stored.path / "tokenizer.json").read_text()
    assert stored.verify() == []
    assert _entries(store) == ["v1"]


def test_list_ignores_staging_directories_and_get_never_sees_them(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with store.lock(URI), store.staging(URI) as staging:
        _stage(staging)
        (staging / "manifest.json").write_text(json.dumps({**MANIFEST, "files": {}}))
        assert store.get(URI) is None
        assert store.list() == []
    assert _entries(store) == []


def test_a_crash_between_the_two_renames_is_undone_by_the_next_lock(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _install(store, "old")
    target = store.model_dir(URI)
    # What a process killed right after moving the old version aside leaves behind.
    os.rename(target, target.parent / ".replaced-v1-abc123")
    (target.parent / ".staging-v1-def456").mkdir()
    assert store.get(URI) is None
    with store.lock(URI):
        pass
    stored = store.get(URI)
    assert stored is not None and stored.verify() == []
    assert _entries(store) == ["v1"]


def test_remove_deletes_the_model(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _install(store)
    assert store.remove(URI) is True
    assert store.get(URI) is None
    assert _entries(store) == []
    assert store.remove(URI) is False


def test_second_deployment_of_the_same_model_is_refused_while_one_runs(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    errors: list[str] = []
    with store.lock(URI):
        # flock locks belong to open file descriptions: another thread's open counts as another
        # process would.
        def other() -> None:
            try:
                with store.lock(URI):
                    pass
            except StoreError as exc:
                errors.append(str(exc))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert errors and "in progress" in errors[0]


def test_missing_precision_says_how_to_get_it(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _install(store)
    stored = store.get(URI)
    assert stored is not None and stored.precisions == ["fp32"]
    with pytest.raises(StoreError, match="--precision int8"):
        stored.onnx_path("int8")


def test_manifest_that_is_not_json_is_reported_with_what_to_do(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _install(store)
    (store.model_dir(URI) / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="deploy the model again"):
        store.get(URI)


@pytest.mark.parametrize("uri", ["../etc:v1", "a:../b", "a..b:v1", "a/b:v1"])
def test_store_refuses_a_uri_that_is_not_a_safe_directory_name(tmp_path: Path, uri: str) -> None:
    with pytest.raises(CatalogError, match="name:version"):
        ModelStore(tmp_path).model_dir(uri)
