"""The generated Hub-style models (tests/fixtures/stmodels.py) load and behave as asked.

The "bring your own model" tests trust these folders to be what sentence-transformers and
transformers make of a real repository, so each promise of the generator is checked here with
the libraries themselves, offline.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.stmodels import (
    ARCHITECTURES,
    TOKENIZER_FILES,
    make_cross_encoder,
    make_generative,
    make_remote_code,
    make_st_model,
    make_without_tokenizer,
    st_encode,
)

TEXTS = ["hello world", "Grüße aus München", "敏捷的棕色狐狸", "the database stores vectors"]
PROMPTS = {"query": "query: ", "passage": "passage: "}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One default folder (mean pooling, Normalize, prompts) per architecture."""
    root = tmp_path_factory.mktemp("stmodels")
    return {arch: make_st_model(root / arch, arch, prompts=PROMPTS) for arch in ARCHITECTURES}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_reloads_offline_with_dimension_and_norm(models: dict[str, Path], arch: str) -> None:
    directory = models[arch]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "modules.json"):
        assert (directory / name).is_file(), name
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == arch
    vectors = st_encode(directory, TEXTS)
    assert vectors.shape == (len(TEXTS), 32)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])
    sbert = json.loads((directory / "sentence_bert_config.json").read_text())
    assert sbert["max_seq_length"] == 64


def test_without_normalize_vectors_are_not_unit(tmp_path: Path) -> None:
    directory = make_st_model(tmp_path / "raw", "distilbert", normalize=False)
    kinds = [
        m["type"].rsplit(".", 1)[-1] for m in json.loads((directory / "modules.json").read_text())
    ]
    assert kinds == ["Transformer", "Pooling"]
    norms = np.linalg.norm(st_encode(directory, TEXTS), axis=1)
    assert not np.allclose(norms, 1.0, atol=1e-3)


def test_cls_and_mean_pooling_differ(models: dict[str, Path], tmp_path: Path) -> None:
    cls_dir = make_st_model(tmp_path / "cls", "bert", pooling="cls", prompts=PROMPTS)
    pooling = json.loads((cls_dir / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode"] == "cls"
    # Same seed, so the same weights: only the pooling tells the vectors apart.
    same = (cls_dir / "model.safetensors").read_bytes() == (
        models["bert"] / "model.safetensors"
    ).read_bytes()
    assert same
    assert not np.allclose(st_encode(cls_dir, TEXTS), st_encode(models["bert"], TEXTS), atol=1e-3)


@pytest.mark.parametrize("activation", ["tanh", "identity"])
def test_dense_changes_the_dimension(tmp_path: Path, activation: str) -> None:
    directory = make_st_model(
        tmp_path / "dense", "mpnet", dense_out=16, dense_activation=activation
    )
    assert (directory / "2_Dense" / "model.safetensors").is_file()
    dense = json.loads((directory / "2_Dense" / "config.json").read_text())
    assert (dense["in_features"], dense["out_features"]) == (32, 16)
    assert dense["activation_function"].rsplit(".", 1)[-1] == activation.capitalize()
    vectors = st_encode(directory, TEXTS)
    assert vectors.shape == (len(TEXTS), 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_prompts_are_saved_and_change_the_query_vector(models: dict[str, Path]) -> None:
    directory = models["xlm-roberta"]
    saved = json.loads((directory / "config_sentence_transformers.json").read_text())
    assert saved["prompts"] == PROMPTS
    plain = st_encode(directory, TEXTS)
    query = st_encode(directory, TEXTS, prompt_name="query")
    assert not np.allclose(plain, query, atol=1e-3)
    np.testing.assert_allclose(
        query, st_encode(directory, [f"query: {t}" for t in TEXTS]), atol=1e-6
    )


def test_cross_encoder_scores_each_pair(tmp_path: Path) -> None:
    from sentence_transformers import CrossEncoder

    directory = make_cross_encoder(tmp_path / "ce", "roberta")
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == ["RobertaForSequenceClassification"]
    encoder = CrossEncoder(str(directory), device="cpu", local_files_only=True)
    scores = encoder.predict([("query", "a passage"), ("q", "d"), ("hello", "world")])
    assert np.asarray(scores).shape == (3,)


def test_token_type_ids_follow_the_real_tokenizers(models: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    def names(arch: str) -> list[str]:
        tok = AutoTokenizer.from_pretrained(str(models[arch]), local_files_only=True)
        return list(tok.model_input_names)

    assert "token_type_ids" in names("bert")
    for arch in ("roberta", "xlm-roberta", "mpnet", "distilbert"):
        assert "token_type_ids" not in names(arch), arch


def test_same_seed_same_files(models: dict[str, Path], tmp_path: Path) -> None:
    again = make_st_model(tmp_path / "again", "xlm-roberta", prompts=PROMPTS)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "tokenizer_config.json"):
        assert (again / name).read_bytes() == (models["xlm-roberta"] / name).read_bytes(), name
    other = make_st_model(tmp_path / "other", "xlm-roberta", seed=1)
    assert (other / "model.safetensors").read_bytes() != (again / "model.safetensors").read_bytes()


def test_readme_front_matter(tmp_path: Path) -> None:
    card = make_st_model(tmp_path / "m", "bert", matryoshka=[32, 16, 8])
    text = (card / "README.md").read_text()
    assert text.startswith("---\nlicense: apache-2.0\nlibrary_name: sentence-transformers\n")
    assert "\n- matryoshka\n" in text
    assert '"matryoshka_dims": [32, 16, 8]' in text
    bare = make_st_model(tmp_path / "bare", "bert", license=None)
    assert "license:" not in (bare / "README.md").read_text()


def test_odd_repositories(tmp_path: Path) -> None:
    generative = make_generative(tmp_path / "gen")
    config = json.loads((generative / "config.json").read_text())
    assert config["architectures"][0].endswith("ForCausalLM")
    assert (generative / "tokenizer.json").is_file()

    remote = make_remote_code(tmp_path / "remote")
    config = json.loads((remote / "config.json").read_text())
    assert config["auto_map"] == {"AutoModel": "modeling_custom.CustomModel"}
    assert config["model_type"] == "custom-encoder"
    assert (remote / "modeling_custom.py").is_file()
    assert not (remote / "onnx").exists()

    bare = make_without_tokenizer(tmp_path / "bare")
    assert not [name for name in TOKENIZER_FILES if (bare / name).exists()]
    assert (bare / "model.safetensors").is_file()


def test_remote_code_with_onnx(tmp_path: Path) -> None:
    import onnxruntime as ort

    directory = make_remote_code(tmp_path / "remote", with_onnx=True)
    session = ort.InferenceSession(
        str(directory / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    assert sorted(i.name for i in session.get_inputs()) == [
        "attention_mask",
        "input_ids",
        "token_type_ids",
    ]
    ids = np.array([[2, 10, 11, 3]], dtype=np.int64)
    feeds = {
        "input_ids": ids,
        "token_type_ids": np.zeros_like(ids),
        "attention_mask": np.ones_like(ids),
    }
    (hidden,) = session.run(["last_hidden_state"], feeds)
    assert hidden.shape == (1, 4, 32)
