"""Cross-encoder reranking (inference/reranker.py) against sentence-transformers' CrossEncoder.

Each architecture's cross-encoder is generated once (tests/fixtures/stmodels.py), exported by
the product's exporter and scored by ``RerankModel``; ``CrossEncoder.predict`` on the same folder
is the reference, as in the parity gate. bert has token_type_ids, xlm-roberta has none.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sentence_transformers import CrossEncoder
from transformers import AutoTokenizer

from inference.export import TOLERANCE
from inference.modelconfig import ModelConfigError, config_from_manifest
from inference.reranker import (
    RerankConfig,
    RerankModel,
    check_rerank_parity,
    export_cross_encoder,
    longest_first,
    read_rerank_config,
)
from tests.fixtures.stmodels import CORPUS, make_cross_encoder, sharpen

ARCHS = ("bert", "xlm-roberta")
WORDS = " ".join(CORPUS).split()
# Several batches, run on two sessions at once.
SETTINGS = {"engine_sessions": 2, "intra_op_parallelism": 1, "max_batch_size": 16}
# Far past max tokens (128), and past the 12,800 characters the reranker tokenises of a text.
LONG = " ".join(WORDS * 25)


def _build(directory: Path, arch: str, seed: int = 0) -> tuple[Path, float]:
    make_cross_encoder(directory, arch, seed=seed)
    sharpen(directory)
    return directory, export_cross_encoder(directory, directory / "onnx" / "model.onnx")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, float]]:
    """Each architecture's folder, exported, and the export's difference from PyTorch."""
    root = tmp_path_factory.mktemp("rerankers")
    return {arch: _build(root / arch, arch) for arch in ARCHS}


@pytest.fixture(scope="module")
def models(built: dict[str, tuple[Path, float]]) -> dict[str, RerankModel]:
    return {
        arch: RerankModel(
            folder / "onnx" / "model.onnx", folder, read_rerank_config(folder), SETTINGS
        )
        for arch, (folder, _) in built.items()
    }


@pytest.fixture(scope="module")
def references(built: dict[str, tuple[Path, float]]) -> dict[str, CrossEncoder]:
    return {
        arch: CrossEncoder(str(folder), device="cpu", local_files_only=True)
        for arch, (folder, _) in built.items()
    }


def _predict(
    reference: CrossEncoder, query: str, documents: list[str], **kwargs: Any
) -> np.ndarray:
    pairs = [(query, document) for document in documents]
    return np.asarray(reference.predict(pairs, show_progress_bar=False, **kwargs))


def _assert_same_ranking(ours: np.ndarray, theirs: np.ndarray, tie: float = 1e-5) -> None:
    """Every two documents the reference ranks more than ``tie`` apart are ranked alike.

    Of 200 random texts two may score less than 1e-6 apart, within the float noise between
    ONNX Runtime and PyTorch (about 1e-6 here): their order is a coin toss on either side.
    """
    ahead = theirs[:, None] - theirs[None, :] > tie
    assert ahead.sum() > 0.99 * len(theirs) * (len(theirs) - 1) / 2
    assert (ours[:, None] > ours[None, :])[ahead].all()


def _documents(count: int, seed: int) -> list[str]:
    """``count`` distinct texts of 0 to 150 words, one of them empty."""
    rng = random.Random(seed)
    texts = {""}
    while len(texts) < count:
        texts.add(" ".join(rng.choices(WORDS, k=rng.choice([1, 3, 10, 40, 150]))))
    return rng.sample(sorted(texts), count)


@pytest.mark.parametrize("arch", ARCHS)
def test_export_matches_torch_with_the_tokenizers_inputs(
    built: dict[str, tuple[Path, float]], arch: str
) -> None:
    folder, diff = built[arch]
    assert diff <= TOLERANCE
    session = ort.InferenceSession(str(folder / "onnx" / "model.onnx"))
    names = {i.name for i in session.get_inputs()}
    expected = {"input_ids", "attention_mask"} | ({"token_type_ids"} if arch == "bert" else set())
    assert names == expected
    assert [(o.name, o.shape[1]) for o in session.get_outputs()] == [("logits", 1)]


@pytest.mark.parametrize("arch", ARCHS)
def test_scores_equal_cross_encoder_in_one_batched_call(
    models: dict[str, RerankModel], references: dict[str, CrossEncoder], arch: str
) -> None:
    documents = _documents(200, seed=1)
    query = "How does PostgreSQL store vectors for semantic search?"
    scores = models[arch].score(query, documents)
    assert scores.dtype == np.float32 and scores.shape == (200,)
    np.testing.assert_allclose(scores, _predict(references[arch], query, documents), atol=1e-4)
    # The ranking, by logit: float32 sigmoids a few 1e-7 apart may round to one value.
    logits = models[arch].score(query, documents, raw=True)
    theirs = _predict(references[arch], query, documents, activation_fn=torch.nn.Identity())
    _assert_same_ranking(logits, theirs)


@pytest.mark.parametrize("arch", ARCHS)
def test_pairs_tokenise_as_transformers_does(
    built: dict[str, tuple[Path, float]], models: dict[str, RerankModel], arch: str
) -> None:
    folder, _ = built[arch]
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    documents = [*_documents(40, seed=2), LONG]
    # A short query, one over half the room, one past it (its pairs cut on both sides).
    for query in ("hello", " ".join(WORDS[:40]), " ".join(WORDS[:120])):
        ours = models[arch].tokenize_pairs(query, documents)
        theirs = tokenizer(
            [query] * len(documents), documents, truncation="longest_first", max_length=128
        )
        assert ours.ids == theirs["input_ids"]
        if arch == "bert":
            assert ours.type_ids == theirs["token_type_ids"]
        full = tokenizer([query] * len(documents), documents)["input_ids"]
        np.testing.assert_array_equal(ours.truncated, [len(ids) > 128 for ids in full])


def test_longest_first_keeps_what_tokenizers_keeps(built: dict[str, tuple[Path, float]]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(built["bert"][0]), local_files_only=True)
    budgets = {15: 12, 16: 13}  # max_length -> room besides [CLS] [SEP] [SEP], even and odd
    for max_length, budget in budgets.items():
        for first in range(0, 20, 3):
            for second in range(0, 20):
                # In lists: transformers takes a lone empty second text for no pair at all.
                pair = tokenizer(
                    ["a " * first],
                    ["a " * second],
                    truncation="longest_first",
                    max_length=max_length,
                )
                kept = np.bincount(pair["token_type_ids"][0], minlength=2) - (2, 1)
                assert tuple(kept) == longest_first(first, second, budget), (first, second)


def test_texts_cut_before_tokenising_keep_the_odd_token_where_tokenizers_would(
    built: dict[str, tuple[Path, float]],
) -> None:
    folder, _ = built["bert"]
    model = RerankModel(
        folder / "onnx" / "model.onnx", folder, RerankConfig(max_tokens=16), SETTINGS
    )
    # bert reads a word with a character outside its vocabulary as one [UNK]: texts of few
    # tokens over many characters. Both exceed 16 x 100 characters; the query has more tokens
    # in what is tokenised of it, the document more in all: the document keeps the odd token.
    query = ("☃" * 9 + " ") * 170
    document = ("☃" * 99 + " ") * 16 + "a " * 200
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    theirs = tokenizer(query, document, truncation="longest_first", max_length=16)
    ours = model.tokenize_pairs(query, [document])
    assert ours.ids == [theirs["input_ids"]]
    assert ours.type_ids == [theirs["token_type_ids"]]
    assert ours.truncated.tolist() == [True]


@pytest.mark.parametrize("arch", ARCHS)
def test_long_documents_are_cut_on_their_side_and_the_query_counts(
    models: dict[str, RerankModel], references: dict[str, CrossEncoder], arch: str
) -> None:
    model = models[arch]
    query = "Wie speichert die Datenbank Vektoren?"
    documents = [LONG + " the end", LONG + " ein ganz anderer Schluss", "x"]
    scores = model.score(query, documents)
    np.testing.assert_allclose(scores, _predict(references[arch], query, documents), atol=1e-4)
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)
    tokens = model.tokenize_pairs(query, documents)
    assert tokens.truncated.tolist() == [True, True, False]
    assert tokens.lengths.tolist()[:2] == [128, 128]
    # The whole query is in each pair, after the first special token; another query scores
    # the same documents otherwise.
    alone = model.tokenize_pairs(query, [""]).ids[0]
    query_ids = alone[1 : alone.index(tokens.ids[2][-1])]
    assert all(ids[1 : 1 + len(query_ids)] == query_ids for ids in tokens.ids)
    other = model.score("The quick brown fox jumps over the lazy dog.", documents[:1])
    assert abs(float(other[0]) - float(scores[0])) > 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_raw_gives_the_logits(
    models: dict[str, RerankModel], references: dict[str, CrossEncoder], arch: str
) -> None:
    documents = _documents(12, seed=3)
    query = "Où est la bibliothèque ?"
    scores = models[arch].score(query, documents)
    logits = models[arch].score(query, documents, raw=True)
    assert logits.dtype == np.float32
    identity = torch.nn.Identity()
    theirs = _predict(references[arch], query, documents, activation_fn=identity)
    np.testing.assert_allclose(logits, theirs, atol=1e-4)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits.astype(np.float64))), scores, atol=1e-6)


def test_identity_activation_is_read_and_applied(
    built: dict[str, tuple[Path, float]], models: dict[str, RerankModel], tmp_path: Path
) -> None:
    folder = shutil.copytree(built["bert"][0], tmp_path / "identity")
    path = folder / "config_sentence_transformers.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps(config | {"activation_fn": "torch.nn.modules.linear.Identity"}))
    rerank_config = read_rerank_config(folder)
    assert rerank_config == RerankConfig(max_tokens=128, activation="identity")
    model = RerankModel(folder / "onnx" / "model.onnx", folder, rerank_config, SETTINGS)
    documents = _documents(5, seed=4)
    scores = model.score("hello", documents)
    reference = CrossEncoder(str(folder), device="cpu", local_files_only=True)
    np.testing.assert_allclose(scores, _predict(reference, "hello", documents), atol=1e-4)
    np.testing.assert_array_equal(scores, models["bert"].score("hello", documents, raw=True))


def test_config_round_trips_through_the_manifest(built: dict[str, tuple[Path, float]]) -> None:
    config = read_rerank_config(built["xlm-roberta"][0])
    assert config == RerankConfig(max_tokens=128, activation="sigmoid", num_labels=1)
    manifest = config.to_manifest()
    assert manifest == {
        "kind": "reranker",
        "max_tokens": 128,
        "activation": "sigmoid",
        "num_labels": 1,
    }
    assert RerankConfig.from_manifest(manifest) == config
    assert config_from_manifest(manifest) == config  # the kind picks the config's class
    with pytest.raises(ModelConfigError, match="lacks activation"):
        RerankConfig.from_manifest({"max_tokens": 128, "num_labels": 1})


def test_two_labels_are_refused(built: dict[str, tuple[Path, float]], tmp_path: Path) -> None:
    folder = shutil.copytree(built["bert"][0], tmp_path / "two-labels")
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["id2label"] = {"0": "contradiction", "1": "entailment"}
    config["label2id"] = {"contradiction": 0, "entailment": 1}
    path.write_text(json.dumps(config))
    with pytest.raises(ModelConfigError, match=r"2 labels \(contradiction, entailment\)"):
        read_rerank_config(folder)


def test_inputs_that_are_not_strings_are_refused(models: dict[str, RerankModel]) -> None:
    with pytest.raises(TypeError, match="document 1 must be a string, got int"):
        models["bert"].score("query", ["fine", 3])
    with pytest.raises(TypeError, match="the query must be a string"):
        models["bert"].score(None, ["fine"])  # type: ignore[arg-type]
    assert models["bert"].score("query", []).shape == (0,)


def test_parity_gate_passes_a_faithful_export(built: dict[str, tuple[Path, float]]) -> None:
    folder, _ = built["xlm-roberta"]
    lines: list[str] = []
    result = check_rerank_parity(
        folder, folder / "onnx" / "model.onnx", read_rerank_config(folder), log=lines.append
    )
    assert result.passed, result.summary()
    assert result.same_order and result.max_abs_diff <= TOLERANCE
    assert result.pairs == 30
    assert lines == [result.summary()]
    manifest = result.to_manifest()
    assert manifest["passed"] is True and manifest["threshold"] == TOLERANCE
    assert manifest["reference"].startswith("sentence-transformers 6.2.0 / PyTorch")


def test_parity_gate_fails_a_graph_of_other_weights(
    built: dict[str, tuple[Path, float]], tmp_path: Path
) -> None:
    folder, _ = built["bert"]
    other, _ = _build(tmp_path / "other", "bert", seed=1)
    result = check_rerank_parity(folder, other / "onnx" / "model.onnx", read_rerank_config(folder))
    assert not result.passed
    assert result.max_abs_diff > 100 * TOLERANCE and result.max_logit_diff > 100 * TOLERANCE
    assert not result.same_order
    assert "FAILED" in result.summary() and "DIFFERENT ranking" in result.summary()
    assert result.to_manifest()["passed"] is False


@settings(max_examples=40, deadline=None)
@given(
    query=st.text(max_size=40),
    documents=st.lists(st.text(max_size=40), max_size=8),
    data=st.data(),
)
def test_scores_follow_the_documents_whatever_their_order(
    models: dict[str, RerankModel], query: str, documents: list[str], data: st.DataObject
) -> None:
    model = models["bert"]
    scores = model.score(query, documents)
    assert scores.shape == (len(documents),)
    assert np.isfinite(scores).all()
    assert ((scores >= 0) & (scores <= 1)).all()
    order = data.draw(st.permutations(range(len(documents))))
    shuffled = model.score(query, [documents[i] for i in order])
    np.testing.assert_allclose(shuffled, scores[list(order)], atol=1e-5)
