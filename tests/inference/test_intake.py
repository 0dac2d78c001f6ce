"""Adding a model: inspecting a folder or a Hub repository (served by a FakeHub over HTTP),
the refusals, the added models' catalog, and deployments of added models with their parity
gate, on random-weight models of each supported architecture generated here."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference import catalog as catalog_module
from inference.catalog import CatalogError, entry_from_raw
from inference.engine import EmbeddingModel
from inference.export import export_onnx
from inference.intake import IntakeError, inspect_source, parse_source
from inference.modelconfig import RerankConfig
from inference.provision import ProvisionError, deploy
from inference.reranker import RerankModel, export_cross_encoder
from inference.resources import Resources
from inference.store import ModelStore
from tests.fixtures.fakehub import FakeHub
from tests.fixtures.rerankers import reference_scores
from tests.fixtures.stmodels import (
    ARCHITECTURES,
    make_cross_encoder,
    make_generative,
    make_remote_code,
    make_st_model,
    make_without_tokenizer,
    sharpen,
    st_encode,
)

TEXTS = [
    "PostgreSQL stores vectors beside the rows they describe.",
    "Wie viele Einwohner hat Berlin?",
    "数据库中的向量搜索",
    "",
    "a long text that runs past the model's max tokens " * 40,
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("byom-models")


@pytest.fixture
def added_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The added models' catalog in a file of this test's own."""
    path = tmp_path / "added.json"
    monkeypatch.setenv("ADDED_MODELS_CATALOG", str(path))
    catalog_module.catalog.cache_clear()
    yield path
    catalog_module.catalog.cache_clear()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _add(folder_or_source: str, uri: str) -> None:
    inspection = inspect_source(folder_or_source)
    assert inspection.ok, inspection.refusals
    catalog_module.add_entry(inspection.entry(uri, added_by="tests"))


# -- sources ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "give a source"),
        ("hf:not a repo", "not a Hub source"),
        ("relative/folder", "absolute folder path"),
        ("/no/such/folder", "not a folder"),
    ],
)
def test_a_source_that_cannot_be_read_says_what_to_write(text: str, problem: str) -> None:
    with pytest.raises(IntakeError, match=problem):
        parse_source(text)


def test_hub_sources_take_a_revision() -> None:
    spec = parse_source("hf:BAAI/bge-small-en-v1.5@v2.0")
    assert (spec.kind, spec.ref, spec.revision) == ("hub", "BAAI/bge-small-en-v1.5", "v2.0")
    assert spec.label == "hf:BAAI/bge-small-en-v1.5@v2.0"


# -- what inspection finds ----------------------------------------------------------------------


def test_inspection_reports_what_the_folder_holds(models: Path) -> None:
    folder = make_st_model(
        models / "dense-model",
        "bert",
        pooling="cls",
        dense_out=16,
        prompts={"query": "query: ", "passage": "passage: "},
        license="mit",
        matryoshka=[32, 16, 8],
    )
    found = inspect_source(str(folder))
    assert found.ok, found.refusals
    assert (found.model_type, found.architectures) == ("bert", ["BertModel"])
    assert found.config is not None
    assert (found.hidden_size, found.config.dimensions) == (32, 16)
    assert (found.config.pooling, found.config.normalize, found.config.max_tokens) == (
        "cls",
        True,
        64,
    )
    assert found.prompts == {"query": "query: ", "passage": "passage: "}
    assert found.config.matryoshka_dimensions == (8,)  # the shorter ones than its 16
    assert found.license == {"name": "mit", "url": "https://opensource.org/license/mit"}
    assert found.parameters_exact and found.parameters and found.parameters > 10_000
    assert found.needs_export and found.onnx is None
    assert found.proposed_uri == "dense-model:v1"
    facts = dict(found.facts())
    assert facts["Dense layers"] == "32 → 16 (tanh)"
    assert facts["Output dimensions"] == "16"


def test_a_card_without_a_license_reads_unknown_never_a_guess(models: Path) -> None:
    found = inspect_source(str(make_st_model(models / "no-license", license=None)))
    assert found.ok and found.license is None
    assert dict(found.facts())["License"].startswith("unknown")
    entry = found.entry("no-license:v1")
    assert entry["license"] == {"name": "unknown", "url": ""}


# -- refusals ---------------------------------------------------------------------------------


def _refusal(source: Path | str, **kwargs: object) -> str:
    found = inspect_source(str(source), **kwargs)  # type: ignore[arg-type]
    assert not found.ok
    with pytest.raises(ValueError):
        found.entry("refused:v1")
    return " | ".join(map(str, found.refusals))


def test_remote_code_without_onnx_is_refused_without_running_it(models: Path) -> None:
    reason = _refusal(make_remote_code(models / "remote"))
    assert "trust_remote_code" in reason and "ships no ONNX graph" in reason
    assert "never runs a repository's Python code" in reason


def test_remote_code_with_onnx_is_refused_because_parity_would_run_it(models: Path) -> None:
    reason = _refusal(make_remote_code(models / "remote-onnx", with_onnx=True))
    assert "trust_remote_code" in reason and "cannot be checked against the original" in reason


def test_an_architecture_the_exporter_does_not_handle_is_refused(models: Path) -> None:
    folder = make_st_model(models / "unsupported")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="electra", architectures=["ElectraModel"])
    (folder / "config.json").write_text(json.dumps(config))
    reason = _refusal(folder)
    assert "architecture electra (ElectraModel) is not one the ONNX exporter supports" in reason


def test_a_model_without_a_tokenizer_is_refused(models: Path) -> None:
    assert "no tokenizer" in _refusal(make_without_tokenizer(models / "no-tokenizer"))


def test_a_cross_encoder_offered_as_an_embedder_is_refused(models: Path) -> None:
    reason = _refusal(make_cross_encoder(models / "cross-encoder"), kind="embedding")
    assert "is a cross-encoder (a reranker)" in reason and "Add it as a reranker" in reason


def test_an_embedder_offered_as_a_reranker_is_refused(models: Path) -> None:
    reason = _refusal(make_st_model(models / "bi-encoder"), kind="reranker")
    assert "is an embedding model" in reason and "no classification head" in reason


def test_a_cross_encoder_is_inspected_as_a_reranker(models: Path) -> None:
    found = inspect_source(str(make_cross_encoder(models / "reranker", "xlm-roberta")))
    assert found.ok, found.refusals
    assert found.kind == "reranker" and found.dimensions is None
    facts = dict(found.facts())
    assert facts["Kind"].startswith("reranker")
    assert facts["Max tokens"].startswith("128")
    assert facts["Score"] == "sigmoid of the classifier's one logit"
    assert "Output dimensions" not in facts and "Pooling" not in facts
    entry = entry_from_raw(found.entry("reranker:v1"))
    assert entry.kind == "reranker" and entry.dimensions is None
    assert entry.offers_int8 and entry.max_tokens == 128  # with its own rankings gate


def test_a_cross_encoder_of_several_labels_is_refused(models: Path) -> None:
    folder = make_cross_encoder(models / "two-labels")
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "contradiction", "1": "entailment"}
    (folder / "config.json").write_text(json.dumps(config))
    reason = _refusal(folder)
    assert "2 labels (contradiction, entailment)" in reason and "exactly one" in reason


def test_a_cross_encoder_of_an_architecture_the_reranker_does_not_export_is_refused(
    models: Path,
) -> None:
    folder = make_cross_encoder(models / "mpnet-reranker", "mpnet")
    reason = _refusal(folder)
    assert "for rerankers (bert, roberta, xlm-roberta)" in reason


def test_a_generative_model_is_refused(models: Path) -> None:
    assert "generative language model" in _refusal(make_generative(models / "generative"))


def test_a_model_too_large_for_the_machine_is_refused(models: Path) -> None:
    small = Resources(
        cores=2,
        memory_mb=256,
        available_memory_mb=200,
        disk_total_gb=10,
        disk_free_gb=5,
        disk_path=models,
    )
    reason = _refusal(make_st_model(models / "big"), machine=small)
    assert "needs about" in reason and "this machine has 256 MB" in reason


# -- the Hub, over HTTP -------------------------------------------------------------------------


def test_a_hub_repository_is_inspected_from_its_small_files_alone(
    models: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_st_model(models / "hub-roberta", "roberta", dense_out=8)
    fake_hub.add_repo("acme/hub-roberta", folder)
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.endpoint)
    found = inspect_source("hf:acme/hub-roberta")
    assert found.ok, found.refusals
    assert found.revision == fake_hub.repos["acme/hub-roberta"].commit
    assert found.config is not None and found.config.dimensions == 8
    assert found.parameters == inspect_source(str(folder)).parameters
    weights = (folder / "model.safetensors").stat().st_size
    assert found.download_bytes > weights
    assert "config.json" in fake_hub.downloaded("acme/hub-roberta")
    # The weights are read for their header alone (the parameter count): ranged reads.
    weights_reads = [r for r in fake_hub.downloads() if r.server == "cdn"]
    assert weights_reads and all(r.range for r in weights_reads)


def test_a_missing_and_a_gated_repository_are_refused_clearly(
    models: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.endpoint)
    with pytest.raises(IntakeError, match="there is no Hub repository acme/missing"):
        inspect_source("hf:acme/missing")
    fake_hub.add_repo("acme/gated", make_st_model(models / "gated"), gated=True)
    with pytest.raises(IntakeError, match=r"gated repository.*accept"):
        inspect_source("hf:acme/gated")


# -- the added models' catalog ------------------------------------------------------------------


def test_added_models_join_the_catalog_and_leave_it(models: Path, added_catalog: Path) -> None:
    shipped = catalog_module.catalog().uris()
    _add(str(make_st_model(models / "listed")), "listed:v1")
    assert catalog_module.catalog().uris() == [*shipped, "listed:v1"]
    entry = catalog_module.catalog().get("listed:v1")
    assert entry.added is not None and entry.added["by"] == "tests" and entry.needs_parity
    with pytest.raises(CatalogError, match="already has a model listed:v1"):
        _add(str(models / "listed"), "listed:v1")
    with pytest.raises(CatalogError, match="already has"):
        _add(str(models / "listed"), shipped[0])
    assert not catalog_module.remove_entry(shipped[0])  # shipped models stay
    assert catalog_module.remove_entry("listed:v1")
    assert catalog_module.catalog().uris() == shipped


# -- deployments of added models, with the parity gate -------------------------------------------


# Every architecture is deployed and called through SQL in tests/extension/test_added_models.py;
# these add CLS pooling with a Dense layer and a prompt, and a model that does not normalise.
@pytest.mark.parametrize(
    ("arch", "options"),
    [
        ("bert", {"pooling": "cls", "dense_out": 16, "prompts": {"query": "query: "}}),
        ("distilbert", {"pooling": "cls", "normalize": False}),
    ],
)
def test_an_added_model_deploys_and_embeds_as_sentence_transformers_does(
    models: Path, added_catalog: Path, tmp_path: Path, arch: str, options: dict
) -> None:
    assert arch in ARCHITECTURES
    folder = make_st_model(models / f"{arch}-{len(options)}-{options['pooling']}", arch, **options)
    uri = f"{arch}-added:v1"
    _add(str(folder), uri)
    result = deploy(uri, store=ModelStore(tmp_path / "store"))
    parity = result.stored.manifest["quality"]["parity"]
    assert parity["passed"] and parity["min_cosine"] >= 0.9999
    assert parity["texts"] >= 16
    assert not (result.stored.path / "model.safetensors").exists()  # the store serves ONNX
    model = EmbeddingModel.from_stored(result.stored, {})
    ours = model.embed(TEXTS).vectors
    assert _cosines(ours, st_encode(folder, TEXTS)).min() >= 0.9999
    if "query" in (options.get("prompts") or {}):
        queried = model.embed(TEXTS, input_type="query").vectors
        assert _cosines(queried, st_encode(folder, TEXTS, prompt_name="query")).min() >= 0.9999


def test_a_graph_that_differs_from_the_original_fails_the_gate_and_installs_nothing(
    models: Path, added_catalog: Path, tmp_path: Path
) -> None:
    folder = make_st_model(models / "mismatch", seed=1)
    other = make_st_model(models / "other-weights", seed=2)
    # The folder ships an ONNX graph of other weights than its PyTorch ones.
    export_onnx(other, folder / "onnx" / "model.onnx")
    store = ModelStore(tmp_path / "store")
    _add(str(folder), "mismatch:v1")
    with pytest.raises(ProvisionError, match=r"does not serve what the original model computes"):
        deploy("mismatch:v1", store=store)
    assert store.get("mismatch:v1") is None
    assert not [p for p in (tmp_path / "store").glob("mismatch/*") if p.is_dir()]  # no staging


def test_a_reranker_deploys_through_its_own_gate_and_serves_crossencoder_scores(
    models: Path, added_catalog: Path, tmp_path: Path
) -> None:
    folder = make_cross_encoder(models / "rerank-deploy", "bert", seed=3)
    sharpen(folder)
    store = ModelStore(tmp_path / "store")
    _add(str(folder), "rerank-deploy:v1")
    stored = deploy("rerank-deploy:v1", store=store).stored
    assert stored.manifest["kind"] == "reranker"
    gate = stored.manifest["quality"]["parity"]
    assert gate["passed"] and gate["same_order"] and gate["max_logit_diff"] <= 1e-4
    assert isinstance(stored.config, RerankConfig)
    model = RerankModel(stored.onnx_path(), stored.tokenizer_dir, stored.config, {})
    scores = model.score(TEXTS[0], TEXTS)
    np.testing.assert_allclose(scores, reference_scores(folder, TEXTS[0], TEXTS), atol=1e-4)


@pytest.mark.parametrize("passes", [True, False], ids=["admitted", "refused"])
def test_a_rerankers_int8_variant_is_held_to_its_fp32_rankings(
    models: Path, added_catalog: Path, tmp_path: Path, passes: bool
) -> None:
    """The gate's figures are recorded either way; thresholds out of reach (or none at all)
    decide the verdict here, since a random model's int8 figures say nothing of a real one's."""
    folder = make_cross_encoder(models / f"rerank-int8-{passes}", "bert", seed=4)
    sharpen(folder)
    entry = inspect_source(str(folder)).entry("rerank-int8:v1")
    assert entry["int8"]["thresholds"] == {"mean_spearman": 0.98, "top3_agreement": 0.9}
    entry["int8"]["thresholds"] = (
        {"mean_spearman": -1.0, "top3_agreement": 0.0}
        if passes
        else {"mean_spearman": 1.01, "top3_agreement": 1.01}
    )
    catalog_module.add_entry(entry)
    store = ModelStore(tmp_path / "store")
    result = deploy("rerank-int8:v1", store=store, precision="int8")
    gate = result.stored.manifest["quality"]["int8"]
    assert gate["kind"] == "reranker" and gate["passed"] is passes
    assert gate["queries"] >= 20 and gate["pairs"] == gate["queries"] * 40
    assert -1.0 <= gate["min_spearman"] <= gate["mean_spearman"] <= 1.0
    assert 0.0 <= gate["top3_agreement"] <= 1.0
    assert ("int8" in result.stored.precisions) is passes
    if passes:
        config = result.stored.config
        int8 = RerankModel(result.stored.onnx_path("int8"), result.stored.tokenizer_dir, config, {})
        fp32 = RerankModel(result.stored.onnx_path(), result.stored.tokenizer_dir, config, {})
        scores = int8.score(TEXTS[0], TEXTS)
        assert scores.shape == (len(TEXTS),)
        assert np.abs(scores - fp32.score(TEXTS[0], TEXTS)).max() <= max(gate["max_abs_diff"], 0.05)


def test_a_reranker_graph_of_other_weights_fails_the_gate_and_installs_nothing(
    models: Path, added_catalog: Path, tmp_path: Path
) -> None:
    folder = make_cross_encoder(models / "rerank-mismatch", "xlm-roberta", seed=1)
    other = make_cross_encoder(models / "rerank-other", "xlm-roberta", seed=2)
    for directory in (folder, other):
        sharpen(directory)
    export_cross_encoder(other, folder / "onnx" / "model.onnx")
    store = ModelStore(tmp_path / "store")
    _add(str(folder), "rerank-mismatch:v1")
    with pytest.raises(ProvisionError, match="does not score as the original cross-encoder"):
        deploy("rerank-mismatch:v1", store=store)
    assert store.get("rerank-mismatch:v1") is None


def test_weights_kept_in_external_data_deploy_from_an_export_and_from_a_shipped_graph(
    models: Path, added_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model over 2 GiB keeps its weights beside the graph; the threshold is lowered so that
    a small model takes the same path."""
    monkeypatch.setenv("ONNX_EXTERNAL_DATA_MB", "0")
    folder = make_st_model(models / "external", "xlm-roberta", dense_out=16)
    store = ModelStore(tmp_path / "store")
    _add(str(folder), "external:v1")
    exported = deploy("external:v1", store=store).stored
    files = exported.manifest["files"]
    assert "onnx/model.onnx_data" in files
    assert (exported.path / "onnx/model.onnx").stat().st_size < 64 * 1024  # the graph alone
    assert exported.manifest["quality"]["parity"]["passed"]
    vectors = EmbeddingModel.from_stored(exported, {}).embed(TEXTS).vectors
    assert _cosines(vectors, st_encode(folder, TEXTS)).min() >= 0.9999

    # A repository that ships such a graph (at model.onnx, weights in model.onnx_data).
    shipped = models / "ships-external"
    shutil.copytree(folder, shipped)
    for name in ("model.onnx", "model.onnx_data"):
        shutil.copyfile(exported.path / "onnx" / name, shipped / name)
    _add(str(shipped), "ships-external:v1")
    stored = deploy("ships-external:v1", store=store).stored
    assert not stored.manifest["preparation"]["exported"]
    assert stored.manifest["files"]["onnx/model.onnx_data"] == files["onnx/model.onnx_data"]
    assert stored.manifest["quality"]["parity"]["passed"]


@settings(deadline=None)  # it touches the file system: no timing in a pass/fail test
@given(st.text(max_size=80))
def test_any_source_text_is_parsed_or_refused_with_a_clear_error(text: str) -> None:
    try:
        spec = parse_source(text)
    except IntakeError as exc:
        assert str(exc)
    else:
        assert spec.kind in ("hub", "folder")
        if spec.kind == "hub":
            assert parse_source(spec.label) == spec


@settings(deadline=None)
@given(st.text(min_size=1, max_size=60))
def test_the_proposed_uri_is_always_a_valid_one(name: str) -> None:
    from inference.catalog import parse_uri
    from inference.intake import Inspection, SourceSpec

    inspection = Inspection(source=SourceSpec("hub", f"org/{name}"), revision=None, files={})
    parse_uri(inspection.proposed_uri)


def test_a_decoder_embedder_with_last_token_pooling_is_refused_with_the_reason(
    models: Path,
) -> None:
    folder = make_generative(models / "decoder-embedder")
    st_modules = "sentence_transformers.models."
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": st_modules + "Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": st_modules + "Pooling"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"embedding_dimension": 32, "pooling_mode": "lasttoken"})
    )
    reason = _refusal(folder)
    assert "last-token pooling" in reason and "decoder embedders" in reason
    assert "generative" not in reason  # it is an embedder, refused for what it is


def test_the_hub_is_not_asked_when_hf_hub_offline_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(IntakeError, match=r"HF_HUB_OFFLINE is set.*from a folder"):
        inspect_source("hf:acme/anything")
