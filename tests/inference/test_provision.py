"""The deployment pipeline on generated models: fetch, verify, prepare, install, and skips."""

from __future__ import annotations

import errno
import shutil
import sys
from pathlib import Path

import numpy as np
import onnxruntime.quantization
import pytest

from inference import export
from inference import store as store_module
from inference.catalog import Catalog, load_catalog
from inference.engine import EmbeddingModel
from inference.export import ExportError, export_onnx
from inference.provision import DeployResult, ProgressEvent, ProvisionError, deploy
from inference.store import ModelStore
from tests.fixtures.realmodel import TINY_URI, tiny_entry, write_catalog
from tests.fixtures.tinymodel import make_tiny_model


@pytest.fixture
def tiny_catalog(tmp_path: Path) -> Catalog:
    return load_catalog(write_catalog(tmp_path / "catalog.json"))


def _deploy_watched(
    folder: Path, store: ModelStore, catalog: Catalog
) -> tuple[DeployResult, list[ProgressEvent]]:
    """Deploy the tiny model from ``folder`` and return the result with every event reported."""
    events: list[ProgressEvent] = []
    result = deploy(
        TINY_URI, source=str(folder), store=store, catalog=catalog, progress=events.append
    )
    return result, events


def _leftovers(store: ModelStore) -> list[str]:
    parent = store.root / "tiny-model"
    if not parent.exists():
        return []
    return sorted(p.name for p in parent.iterdir() if not p.name.startswith(".lock"))


def test_deploy_from_a_folder_installs_a_model_the_engine_serves(
    tmp_path: Path, tiny_model_dir: Path, tiny_catalog: Catalog
) -> None:
    store = ModelStore(tmp_path / "models")
    result, events = _deploy_watched(tiny_model_dir, store, tiny_catalog)
    assert result.changed and result.skipped == []
    stored = result.stored
    assert store.get(TINY_URI) is not None and stored.verify() == []
    manifest = stored.manifest
    assert manifest["source"]["kind"] == "local"
    assert manifest["onnx"] == {"fp32": "onnx/model.onnx"}
    assert manifest["prefixes"] == {"query": "query: ", "passage": "passage: "}
    assert manifest["license"]["name"] == "MIT"
    started = [e.step for e in events if e.kind == "start"]
    assert started == ["fetch", "verify", "prepare", "install"]
    assert any(e.kind == "progress" and e.step == "fetch" and e.done == e.total > 0 for e in events)

    model = EmbeddingModel.from_stored(stored, {})
    vectors = model.embed(["hello world", "database vector search"]).vectors
    assert vectors.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert _leftovers(store) == ["v1"]


def test_second_deploy_verifies_and_skips_everything_else(
    tmp_path: Path, tiny_model_dir: Path, tiny_catalog: Catalog
) -> None:
    store = ModelStore(tmp_path / "models")
    first = deploy(TINY_URI, source=str(tiny_model_dir), store=store, catalog=tiny_catalog)
    again, events = _deploy_watched(tiny_model_dir, store, tiny_catalog)
    assert not again.changed
    assert again.skipped == ["fetch", "prepare", "install"]
    assert again.stored.manifest["created_at"] == first.stored.manifest["created_at"]
    assert [e.kind for e in events if e.step == "verify"][-1] == "done"


def test_damaged_store_copy_is_deployed_again(
    tmp_path: Path, tiny_model_dir: Path, tiny_catalog: Catalog
) -> None:
    store = ModelStore(tmp_path / "models")
    stored = deploy(TINY_URI, source=str(tiny_model_dir), store=store, catalog=tiny_catalog).stored
    (stored.path / "tokenizer.json").write_text("{}")
    again, events = _deploy_watched(tiny_model_dir, store, tiny_catalog)
    assert again.changed
    assert any("tokenizer.json" in e.message for e in events if e.kind == "log")
    assert again.stored.verify() == []
    assert _leftovers(store) == ["v1"]


def test_int8_variant_is_admitted_when_it_passes_its_gate(
    tmp_path: Path, tiny_model_dir: Path, tiny_catalog: Catalog
) -> None:
    store = ModelStore(tmp_path / "models")
    result = deploy(
        TINY_URI, source=str(tiny_model_dir), precision="int8", store=store, catalog=tiny_catalog
    )
    quality = result.stored.manifest["quality"]["int8"]
    assert quality["passed"] is True
    assert quality["mean_cos"] >= 0.99 and quality["top10_agreement"] >= 0.9
    assert quality["probes"] >= 90
    assert result.stored.precisions == ["fp32", "int8"]
    assert result.stored.onnx_path("int8").is_file()
    int8 = EmbeddingModel.from_stored(result.stored, {}, precision="int8")
    assert int8.embed(["hello"]).vectors.shape == (1, 32)


def test_int8_variant_that_fails_its_gate_is_dropped_but_its_figures_kept(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    impossible = tiny_entry(int8={"thresholds": {"mean_cos": 1.01, "top10_agreement": 1.01}})
    catalog = load_catalog(write_catalog(tmp_path / "catalog.json", impossible))
    store = ModelStore(tmp_path / "models")
    result = deploy(
        TINY_URI, source=str(tiny_model_dir), precision="int8", store=store, catalog=catalog
    )
    stored = result.stored
    quality = stored.manifest["quality"]["int8"]
    assert quality["passed"] is False
    assert quality["thresholds"] == {"mean_cos": 1.01, "top10_agreement": 1.01}
    assert 0 < quality["mean_cos"] <= 1.0
    assert stored.precisions == ["fp32"] and "int8" not in stored.manifest["onnx"]
    assert not any("int8" in rel for rel in stored.manifest["files"])
    assert stored.verify() == []
    # Asking again does not rerun a gate that has been measured.
    assert deploy(TINY_URI, precision="int8", store=store, catalog=catalog).changed is False


def test_int8_asked_later_is_built_from_the_stored_model_without_fetching(
    tmp_path: Path, tiny_model_dir: Path, tiny_catalog: Catalog
) -> None:
    store = ModelStore(tmp_path / "models")
    deploy(TINY_URI, source=str(tiny_model_dir), store=store, catalog=tiny_catalog)
    result = deploy(
        TINY_URI, precision="int8", store=store, catalog=tiny_catalog, source=str(tmp_path / "gone")
    )
    assert result.changed and result.skipped == ["fetch"]
    assert result.stored.precisions == ["fp32", "int8"]
    assert result.stored.verify() == []
    assert _leftovers(store) == ["v1"]


def test_files_of_another_model_are_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    store = ModelStore(tmp_path / "models")
    with pytest.raises(ProvisionError, match=r"another model: dimensions 32 \(catalog: 384\)"):
        deploy("all-MiniLM-L6-v2:v1", source=str(tiny_model_dir), store=store)
    assert store.list() == []
    assert sorted(p.name for p in (store.root / "all-MiniLM-L6-v2").iterdir()) == [".lock-v1"]


def _tiny_bert_without_onnx(directory: Path) -> Path:
    """The tiny model's tokenizer and configs with random BERT weights as safetensors."""
    torch = pytest.importorskip("torch", reason="needs the 'export' extra (torch)")
    from transformers import BertConfig, BertModel

    make_tiny_model(directory, onnx_file=False)
    torch.manual_seed(0)
    config = BertConfig.from_pretrained(str(directory))
    BertModel(config).save_pretrained(str(directory))
    return directory


def test_model_without_onnx_is_exported_checked_and_weights_dropped(
    tmp_path: Path, tiny_catalog: Catalog
) -> None:
    folder = _tiny_bert_without_onnx(tmp_path / "bert")
    store = ModelStore(tmp_path / "models")
    result = deploy(TINY_URI, source=str(folder), store=store, catalog=tiny_catalog)
    preparation = result.stored.manifest["preparation"]
    assert preparation["exported"] is True
    assert preparation["export_max_abs_diff"] <= 1e-4
    assert "model.safetensors" not in result.stored.manifest["files"]
    assert "onnx/model.onnx" in result.stored.manifest["files"]
    vectors = EmbeddingModel.from_stored(result.stored, {}).embed(["hello", "world"]).vectors
    assert vectors.shape == (2, 32) and not np.allclose(vectors[0], vectors[1])


def test_export_without_torch_says_which_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_catalog: Catalog
) -> None:
    folder = make_tiny_model(tmp_path / "no-onnx", onnx_file=False)
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ExportError, match=r"pip install '\.\[export\]'"):
        export_onnx(folder, tmp_path / "out.onnx")
    # The deployment prepares the graph in a child process: hide torch from that one too.
    hidden = tmp_path / "without-torch" / "torch"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('torch is hidden by the test')\n")
    monkeypatch.setenv("PYTHONPATH", str(hidden.parent))
    store = ModelStore(tmp_path / "models")
    with pytest.raises(ProvisionError, match=r"torch==2\.13\.0"):
        deploy(TINY_URI, source=str(folder), store=store, catalog=tiny_catalog)
    assert store.get(TINY_URI) is None and _leftovers(store) == []


def test_a_preparation_killed_mid_export_fails_with_the_reason_and_installs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_catalog: Catalog
) -> None:
    """The export runs in a child process; one killed (as the kernel kills a process out of
    memory) fails the deployment, the deploying process itself untouched."""
    folder = make_tiny_model(tmp_path / "no-onnx", onnx_file=False)
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    killer = tmp_path / "killer" / "torch"
    killer.mkdir(parents=True)
    (killer / "__init__.py").write_text(
        "import os, signal\nprint('exporting', flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(killer.parent))
    store = ModelStore(tmp_path / "models")
    with pytest.raises(ProvisionError, match=r"killed by signal 9 \(out of memory\?\)"):
        deploy(TINY_URI, source=str(folder), store=store, catalog=tiny_catalog)
    assert store.get(TINY_URI) is None and _leftovers(store) == []


def test_failed_fetch_leaves_nothing_behind(
    tmp_path: Path, tiny_model_dir: Path, tiny_catalog: Catalog
) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "config.json").unlink()
    store = ModelStore(tmp_path / "models")
    with pytest.raises(ProvisionError, match=r"lacks config\.json"):
        deploy(TINY_URI, source=str(folder), store=store, catalog=tiny_catalog)
    assert _leftovers(store) == []


def test_unknown_precision_is_refused(tmp_path: Path, tiny_catalog: Catalog) -> None:
    with pytest.raises(ProvisionError, match="fp32, int8"):
        deploy(TINY_URI, precision="fp16", store=ModelStore(tmp_path), catalog=tiny_catalog)


@pytest.mark.parametrize(
    ("figures", "kept"),
    [
        ({"max_abs_diff": 0.0, "seconds_a": 2.0, "seconds_b": 1.0}, "optimized"),
        ({"max_abs_diff": 0.0, "seconds_a": 1.0, "seconds_b": 0.99}, "original"),
        ({"max_abs_diff": 1e-2, "seconds_a": 2.0, "seconds_b": 1.0}, "original"),
    ],
)
def test_optimised_graph_is_kept_only_when_accurate_and_clearly_faster(
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    figures: dict[str, float],
    kept: str,
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    graph = folder / "onnx" / "model.onnx"
    original = graph.read_bytes()
    # The real comparison runs too (it must not fail); only its figures are replaced.
    real = export.compare_graphs
    monkeypatch.setattr(export, "compare_graphs", lambda *a: {**real(*a), **figures})
    result = export.optimize_onnx(folder, graph, {"num_heads": 1, "hidden_size": 32})
    assert result["optimized"] is (kept == "optimized")
    assert (graph.read_bytes() == original) is (kept == "original")
    assert sorted(p.name for p in graph.parent.iterdir()) == ["model.onnx"]


# -- a model store that cannot take more -------------------------------------------------------


def _installed(tmp_path: Path, tiny_model_dir: Path, catalog: Catalog) -> ModelStore:
    store = ModelStore(tmp_path / "models")
    deploy(TINY_URI, source=str(tiny_model_dir), store=store, catalog=catalog)
    return store


def _unchanged_fp32(store: ModelStore) -> None:
    stored = store.get(TINY_URI)
    assert stored is not None and stored.verify() == []
    assert stored.precisions == ["fp32"] and "quality" not in stored.manifest
    assert _leftovers(store) == ["v1"]


def test_a_full_store_fails_the_deployment_saying_so_and_keeps_the_installed_model(
    tmp_path: Path, tiny_model_dir: Path, tiny_catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _installed(tmp_path, tiny_model_dir, tiny_catalog)

    def full(src: Path, dst: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(src), None, str(dst))

    monkeypatch.setattr(shutil, "copyfile", full)
    with pytest.raises(ProvisionError) as info:
        deploy(TINY_URI, precision="int8", store=store, catalog=tiny_catalog)
    message = str(info.value)
    assert f"the model store {store.root} cannot take {TINY_URI}" in message
    assert "No space left on device" in message and "Free space on its disk" in message
    assert "the models already in the store are unchanged" in message
    _unchanged_fp32(store)


def test_too_little_room_for_int8_fails_before_quantising_and_records_no_gate(
    tmp_path: Path, tiny_model_dir: Path, tiny_catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _installed(tmp_path, tiny_model_dir, tiny_catalog)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1024))
    with pytest.raises(ProvisionError, match="0 MB free where building the int8 variant"):
        deploy(TINY_URI, precision="int8", store=store, catalog=tiny_catalog)
    _unchanged_fp32(store)
    monkeypatch.undo()
    # The gate was never measured, so room made, int8 is built.
    result = deploy(TINY_URI, precision="int8", store=store, catalog=tiny_catalog)
    assert result.changed and result.stored.precisions == ["fp32", "int8"]


def test_a_read_only_store_says_to_make_it_writable(
    tmp_path: Path, tiny_model_dir: Path, tiny_catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _installed(tmp_path, tiny_model_dir, tiny_catalog)
    real_open = open

    def read_only(path: object, *args: object, **kwargs: object) -> object:
        if Path(str(path)).name.startswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(store_module, "open", read_only, raising=False)
    with pytest.raises(ProvisionError, match=r"Read-only file system .*Make it writable"):
        deploy(TINY_URI, precision="int8", store=store, catalog=tiny_catalog)
    monkeypatch.undo()
    _unchanged_fp32(store)


def test_a_failed_quantisation_leaves_no_shape_inferred_copy_in_the_staged_files(
    tmp_path: Path, tiny_model_dir: Path, tiny_catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _installed(tmp_path, tiny_model_dir, tiny_catalog)

    def truncated(model_input: str, *args: object, **kwargs: object) -> None:
        # What the quantiser does on a full disk: a cut-off copy, then a failure reading it.
        source = Path(model_input)
        inferred = source.with_name(f"{source.stem}-inferred{source.suffix}")
        inferred.write_bytes(source.read_bytes()[:100])
        raise ValueError("Error parsing message with type 'onnx.ModelProto'")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_dynamic", truncated)
    result = deploy(TINY_URI, precision="int8", store=store, catalog=tiny_catalog)
    assert result.stored.precisions == ["fp32"]
    assert "quantisation failed" in result.stored.manifest["quality"]["int8"]["error"]
    assert not any("inferred" in rel for rel in result.stored.manifest["files"])
    assert result.stored.verify() == []
