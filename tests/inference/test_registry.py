"""The model registry: persistence, stable ids, and what a model path may be."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from inference.catalog import CatalogError, parse_uri
from inference.registry import (
    InvalidModelURI,
    ModelPathError,
    RegistrationConflict,
    Registry,
    RegistryError,
    UnknownModel,
    check_uri,
    resolve_model,
)
from tests.fixtures.sidecar import make_store_dir
from tests.fixtures.tinymodel import HIDDEN, MAX_SEQ_LENGTH, make_tiny_model


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ids_are_stable_across_reopening_and_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "sidecar" / "registry.json"
    registry = Registry(path)
    first = registry.add("a:v1", "/models/a", None, "fp32", {"dimensions": 3}, loaded=True)
    second = registry.add("b:v1", "/models/b", None, "fp32", {}, loaded=False)
    assert (first["id"], second["id"]) == (1, 2)

    reopened = Registry(path)
    assert reopened.get("a:v1")["id"] == 1
    assert reopened.get("a:v1")["dimensions"] == 3
    assert reopened.get("a:v1")["loaded"] is True
    assert reopened.get("b:v1")["loaded"] is False

    reopened.remove("a:v1")
    third = reopened.add("a:v1", "/models/a", None, "fp32", {}, loaded=False)
    assert third["id"] == 3
    assert Registry(path).uris() == ["a:v1", "b:v1"]
    # Written aside and renamed: no temporary file is left next to the registry.
    assert sorted(p.name for p in path.parent.iterdir()) == ["registry.json"]


def test_same_uri_and_path_returns_the_same_entry(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.json")
    entry = registry.add("a:v1", "/models/a", None, "fp32", {}, loaded=False)
    again = registry.add("a:v1", "/models/a/", None, "fp32", {}, loaded=False)
    assert again["id"] == entry["id"]
    assert registry.find("a:v1", "/models/a", None, "fp32") == entry
    assert registry.find("b:v1", "/models/b", None, "fp32") is None


def test_same_uri_with_another_path_is_a_conflict_naming_both(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.json")
    registry.add("a:v1", "/models/a", None, "fp32", {}, loaded=False)
    with pytest.raises(RegistrationConflict) as excinfo:
        registry.add("a:v1", "/models/other", None, "fp32", {}, loaded=False)
    assert "/models/a" in str(excinfo.value)
    assert "unregister" in str(excinfo.value)
    with pytest.raises(RegistrationConflict):
        registry.find("a:v1", "/models/a", None, "int8")


def test_unknown_model_lists_the_registered_ones(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.json")
    registry.add("a:v1", "/models/a", None, "fp32", {}, loaded=False)
    with pytest.raises(UnknownModel) as excinfo:
        registry.get("nope:v1")
    assert "a:v1" in str(excinfo.value)
    assert "deploy it from the console" in str(excinfo.value)
    assert "register it with POST /models" in str(excinfo.value)
    with pytest.raises(UnknownModel):
        registry.set_loaded("nope:v1", True)
    with pytest.raises(UnknownModel):
        registry.remove("nope:v1")


def test_set_loaded_persists(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    registry = Registry(path)
    registry.add("a:v1", "/models/a", None, "fp32", {}, loaded=False)
    registry.set_loaded("a:v1", True)
    assert Registry(path).get("a:v1")["loaded"] is True


def test_damaged_registry_file_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    path.write_text("{not json")
    with pytest.raises(RegistryError) as excinfo:
        Registry(path)
    assert str(path) in str(excinfo.value)
    assert "move it aside" in str(excinfo.value)


@pytest.mark.parametrize(
    "uri", ["multilingual-e5-small:v1", "all-MiniLM-L6-v2:v1", "tiny:v1.2", "a_b:2024-05"]
)
def test_uri_of_the_form_name_version_is_accepted(uri: str) -> None:
    assert check_uri(uri) == uri


@pytest.mark.parametrize(
    "uri", ["tiny", "tiny:", ":v1", "a:b:c", "a/b:v1", "a b:v1", "", "a..b:v1", "a:v1..2"]
)
def test_malformed_uri_is_refused_with_an_example(uri: str) -> None:
    with pytest.raises(InvalidModelURI) as excinfo:
        check_uri(uri)
    assert "name:version" in str(excinfo.value)
    # The catalog and the store refuse it with the same words.
    with pytest.raises(CatalogError) as refused:
        parse_uri(uri)
    assert str(refused.value) == str(excinfo.value)


def test_hugging_face_directory_resolves_with_config_and_hashes(tiny_model_dir: Path) -> None:
    source = resolve_model(tiny_model_dir)
    assert source.onnx_path == tiny_model_dir / "onnx" / "model.onnx"
    assert source.tokenizer_dir == tiny_model_dir
    assert (source.config.dimensions, source.config.max_tokens) == (HIDDEN, MAX_SEQ_LENGTH)
    assert source.config.pooling == "mean"
    hashes = source.file_hashes()
    assert hashes["onnx/model.onnx"] == _sha256(tiny_model_dir / "onnx" / "model.onnx")
    assert hashes["tokenizer.json"] == _sha256(tiny_model_dir / "tokenizer.json")
    assert "1_Pooling/config.json" in hashes
    metadata = source.metadata()
    assert metadata["dimensions"] == HIDDEN
    assert metadata["source"] == {"kind": "local", "ref": str(tiny_model_dir)}


def test_cls_pooling_is_read_from_the_directory(tiny_cls_model_dir: Path) -> None:
    assert resolve_model(tiny_cls_model_dir).config.pooling == "cls"


def test_store_directory_takes_config_license_and_files_from_its_manifest(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    store_dir = make_store_dir(tiny_model_dir, tmp_path / "tiny-store" / "v1")
    source = resolve_model(store_dir)
    assert source.onnx_path == store_dir / "onnx" / "model.onnx"
    assert source.config.query_prefix == "query: "
    metadata = source.metadata()
    assert metadata["license"]["name"] == "MIT"
    assert metadata["prefixes"] == {"query": "query: ", "passage": "passage: "}
    manifest = json.loads((store_dir / "manifest.json").read_text())
    assert source.file_hashes() == manifest["files"]


def test_store_directory_without_int8_explains_the_quality_gate(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    store_dir = make_store_dir(tiny_model_dir, tmp_path / "tiny-store" / "v1")
    with pytest.raises(ModelPathError) as excinfo:
        resolve_model(store_dir, precision="int8")
    assert "quality gate" in str(excinfo.value)
    assert "fp32" in str(excinfo.value)


def test_onnx_file_finds_its_tokenizer_or_asks_for_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    onnx_file = tiny_model_dir / "onnx" / "model.onnx"
    # onnx/model.onnx: the tokenizer is found in the repository root above it.
    assert resolve_model(onnx_file).tokenizer_dir == tiny_model_dir
    assert resolve_model(onnx_file, tiny_model_dir).config.dimensions == HIDDEN

    lonely = tmp_path / "alone" / "deep" / "model.onnx"
    lonely.parent.mkdir(parents=True)
    shutil.copy(onnx_file, lonely)
    with pytest.raises(ModelPathError) as excinfo:
        resolve_model(lonely)
    assert "tokenizer_path" in str(excinfo.value)
    assert resolve_model(lonely, tiny_model_dir).onnx_path == lonely


def test_missing_or_relative_or_unloadable_paths_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ModelPathError, match="does not exist"):
        resolve_model(tmp_path / "nowhere")
    with pytest.raises(ModelPathError, match="absolute path"):
        resolve_model("relative/model")
    no_onnx = make_tiny_model(tmp_path / "no-onnx", onnx_file=False)
    with pytest.raises(ModelPathError, match="no fp32 ONNX file"):
        resolve_model(no_onnx)
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    with pytest.raises(ModelPathError, match=r"neither a model directory nor an \.onnx file"):
        resolve_model(text_file)
    with pytest.raises(ModelPathError, match="precision must be one of"):
        resolve_model(no_onnx, precision="fp16")
