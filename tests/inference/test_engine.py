"""The embedding engine on the generated tiny model (real tokenizer, real ONNX Runtime), and
one check on the real all-MiniLM-L6-v2."""

from __future__ import annotations

import dataclasses
import gc
import random
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import numpy_helper

from inference.engine import (
    MAX_CHARS_PER_TOKEN,
    EmbeddingModel,
    InputTooLongError,
    plan_batches,
    split_by_length,
)
from inference.modelconfig import read_model_config
from inference.store import StoredModel
from tests.fixtures.realmodel import minilm_stored_model  # noqa: F401

TinyEngineFactory = Callable[..., EmbeddingModel]  # the make_tiny_engine fixture

# Every word is one token of the tiny model's vocabulary: n words make n + 2 tokens.
WORDS = "the cat dog house car tree water fire book music city river mountain".split()
SHORT = "the red cat"
LONG = " ".join(WORDS * 2)  # 26 words: 28 tokens, under the 32-token limit
TOO_LONG = " ".join(WORDS * 8)  # 104 words: far past the limit


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(a, b, atol=1e-5, rtol=0))


@pytest.mark.parametrize("engine_fixture", ["tiny_engine", "tiny_cls_engine"])
def test_text_gets_the_same_vector_alone_or_padded_among_longer_texts(
    engine_fixture: str, request: pytest.FixtureRequest
) -> None:
    engine: EmbeddingModel = request.getfixturevalue(engine_fixture)
    alone = engine.embed([SHORT]).vectors[0]
    batch = engine.embed([LONG, SHORT, TOO_LONG]).vectors
    assert _close(batch[1], alone)
    # The same through one explicitly padded run: the short row padded to 32 tokens.
    ids = engine.tokenize([SHORT, TOO_LONG]).ids
    assert len(ids[1]) > len(ids[0])
    assert len(split_by_length(np.array([len(row) for row in ids]))) == 1  # one padded run
    assert _close(engine.run(ids)[0], engine.run(ids[:1])[0])


def test_a_run_of_mixed_lengths_is_split_where_padding_would_cost_more_than_a_run() -> None:
    lengths = np.array([200, 5, 6, 5, 190, 7])
    groups = split_by_length(lengths, overhead=48)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(lengths)))
    assert [sorted(lengths[g].tolist()) for g in groups] == [[5, 5, 6, 7], [190, 200]]
    # Similar lengths stay in one run: a second run would cost more than the padding saved.
    assert len(split_by_length(np.array([10, 12, 11, 14]), overhead=48)) == 1


@given(
    lengths=st.lists(st.integers(min_value=1, max_value=600), min_size=1, max_size=200),
    max_size=st.integers(min_value=1, max_value=64),
    max_tokens=st.integers(min_value=64, max_value=4096),
)
def test_batches_take_every_text_once_longest_first_within_the_limits(
    lengths: list[int], max_size: int, max_tokens: int
) -> None:
    array = np.array(lengths)
    batches = plan_batches(array, max_size, max_tokens)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    widths = [int(array[b].max()) for b in batches]
    assert widths == sorted(widths, reverse=True)  # longest first
    for batch, width in zip(batches, widths, strict=True):
        assert array[batch[0]] == width  # the first member sets the width
        # Within both limits, except a lone text longer than the token budget.
        assert len(batch) == 1 or (len(batch) <= max_size and len(batch) * width <= max_tokens)


def test_split_runs_give_the_same_vectors_as_one_padded_run(tiny_engine: EmbeddingModel) -> None:
    texts = ["cat", "the " * 25 + "dog", "red car", "music " * 28, "a"]
    ids = tiny_engine.tokenize(texts).ids
    assert len(split_by_length(np.array([len(row) for row in ids]))) > 1
    together = tiny_engine.run(ids)
    alone = np.vstack([tiny_engine.run([row]) for row in ids])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_mean_and_cls_pooling_give_different_vectors(
    tiny_engine: EmbeddingModel, tiny_model_dir: Path
) -> None:
    # Same weights, pooling switched: proves the config's pooling is what gets applied.
    cls_config = dataclasses.replace(tiny_engine.config, pooling="cls")
    cls_engine = EmbeddingModel(
        tiny_model_dir / "onnx" / "model.onnx", tiny_model_dir, cls_config, {}
    )
    mean = tiny_engine.embed([LONG]).vectors[0]
    cls = cls_engine.embed([LONG]).vectors[0]
    assert not _close(mean, cls)


def test_rows_come_back_in_input_order_across_batches(make_tiny_engine: TinyEngineFactory) -> None:
    rng = random.Random(7)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(0, 40))) for _ in range(40)]
    # Small batches: the sorted inputs are spread over many runs.
    engine = make_tiny_engine(max_batch_size=3, max_batch_tokens=64)
    together = engine.embed(texts)
    one_by_one = np.stack([engine.embed([text]).vectors[0] for text in texts])
    assert together.vectors.dtype == np.float32
    assert together.vectors.shape == (40, 32)
    assert _close(together.vectors, one_by_one)
    assert together.token_counts == [engine.embed([t]).token_counts[0] for t in texts]


def test_vectors_have_unit_length(tiny_engine: EmbeddingModel) -> None:
    vectors = tiny_engine.embed([SHORT, LONG, TOO_LONG, ""]).vectors
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_vectors_are_not_normalised_when_the_model_says_not(
    make_tiny_engine: TinyEngineFactory, tiny_model_dir: Path
) -> None:
    config = dataclasses.replace(read_model_config(tiny_model_dir), normalize=False)
    raw = make_tiny_engine(config).embed([SHORT, LONG]).vectors
    norms = np.linalg.norm(raw, axis=1)
    assert not np.allclose(norms, 1.0, atol=1e-3)


def test_tokens_match_the_transformers_tokenizer(
    tiny_engine: EmbeddingModel, tiny_model_dir: Path
) -> None:
    from transformers import AutoTokenizer

    texts = ["Hello, World!", "the dogs were running", "", TOO_LONG, "ünïcödé  text"]
    reference = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    expected = reference(texts, truncation=True, max_length=32)["input_ids"]
    assert tiny_engine.tokenize(texts).ids == expected


def test_long_text_is_cut_to_max_tokens_and_equals_its_prefix(tiny_engine: EmbeddingModel) -> None:
    words = TOO_LONG.split()
    prefix = " ".join(words[:30])  # 30 words + [CLS] + [SEP] = the 32-token limit
    result = tiny_engine.embed([TOO_LONG, prefix])
    assert result.token_counts == [32, 32]
    assert _close(result.vectors[0], result.vectors[1])
    ids = tiny_engine.tokenize([TOO_LONG]).ids[0]
    assert ids[-1] == tiny_engine.tokenize([""]).ids[0][-1]  # still closed by [SEP]


def test_too_long_input_without_truncation_is_refused_with_its_index(
    tiny_engine: EmbeddingModel,
) -> None:
    with pytest.raises(InputTooLongError) as error:
        tiny_engine.embed([SHORT, TOO_LONG, LONG], truncate=False)
    assert (error.value.index, error.value.tokens, error.value.max_tokens) == (1, 106, 32)
    assert "input 1 has 106 tokens" in str(error.value)
    # Inputs within the limit are fine without truncation.
    assert tiny_engine.embed([SHORT, LONG], truncate=False).token_counts == [5, 28]


def test_input_type_prepends_the_models_prefix(
    make_tiny_engine: TinyEngineFactory, tiny_model_dir: Path
) -> None:
    config = dataclasses.replace(
        read_model_config(tiny_model_dir), query_prefix="query: ", passage_prefix="passage: "
    )
    engine = make_tiny_engine(config)
    plain = engine.embed(["search database"]).vectors[0]
    query = engine.embed(["search database"], input_type="query")
    passage = engine.embed(["search database"], input_type="passage")
    assert _close(query.vectors[0], engine.embed(["query: search database"]).vectors[0])
    assert _close(passage.vectors[0], engine.embed(["passage: search database"]).vectors[0])
    assert not _close(query.vectors[0], plain)
    assert query.token_counts == [6]  # [CLS] query : search database [SEP]
    with pytest.raises(ValueError, match="input_type"):
        engine.embed(["x"], input_type="document")


def test_each_input_says_whether_it_was_cut_to_max_tokens(
    make_tiny_engine: TinyEngineFactory, tiny_model_dir: Path
) -> None:
    exactly = " ".join(TOO_LONG.split()[:30])  # 30 words + [CLS] + [SEP]: the limit, not past it
    one_more = " ".join(TOO_LONG.split()[:31])
    engine = make_tiny_engine()
    result = engine.embed([SHORT, exactly, one_more, TOO_LONG, ""])
    assert result.token_counts == [5, 32, 32, 32, 2]
    assert result.truncated == [False, False, True, True, False]
    assert engine.embed([SHORT, LONG], truncate=False).truncated == [False, False]
    # The prefix counts: it can push an input at the limit past it.
    config = dataclasses.replace(read_model_config(tiny_model_dir), query_prefix="query: ")
    prefixed = make_tiny_engine(config).embed([exactly], input_type="query")
    assert (prefixed.token_counts, prefixed.truncated) == ([32], [True])
    assert engine.embed([]).truncated == []


def test_token_counts(tiny_engine: EmbeddingModel) -> None:
    assert tiny_engine.embed([SHORT, "", TOO_LONG]).token_counts == [5, 2, 32]
    # count_tokens tells the length before truncation, to compare with max_tokens.
    assert tiny_engine.count_tokens([SHORT, "", TOO_LONG]) == [5, 2, 106]


def test_empty_string_is_embedded_as_the_special_tokens(tiny_engine: EmbeddingModel) -> None:
    result = tiny_engine.embed([""])
    special_only = tiny_engine.run([tiny_engine.tokenize([""]).ids[0]])
    assert result.token_counts == [2]
    assert np.isfinite(result.vectors).all()
    assert _close(result.vectors[0], special_only[0])


def test_no_texts_give_an_empty_result(tiny_engine: EmbeddingModel) -> None:
    result = tiny_engine.embed([])
    assert result.vectors.shape == (0, 32)
    assert result.token_counts == []


def test_non_string_input_is_refused_with_its_index(tiny_engine: EmbeddingModel) -> None:
    with pytest.raises(TypeError, match="input 1 must be a string"):
        tiny_engine.embed(["ok", None])  # type: ignore[list-item]


def test_graph_without_token_type_ids_is_fed_only_what_it_declares(
    tiny_engine: EmbeddingModel, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Some exports have no token_type_ids input; make one by baking in type 0.
    model = onnx.load(str(tiny_model_dir / "onnx" / "model.onnx"))
    inputs = [i for i in model.graph.input if i.name != "token_type_ids"]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    model.graph.initializer.append(
        numpy_helper.from_array(np.zeros((1, 1), dtype=np.int64), "token_type_ids")
    )
    path = tmp_path / "no_token_types.onnx"
    onnx.save(model, str(path))
    engine = EmbeddingModel(path, tiny_model_dir, tiny_engine.config, {})
    texts = [SHORT, LONG]
    assert _close(engine.embed(texts).vectors, tiny_engine.embed(texts).vectors)


def test_graph_wanting_inputs_the_engine_cannot_fill_is_refused_clearly(
    tiny_engine: EmbeddingModel, tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = onnx.load(str(tiny_model_dir / "onnx" / "model.onnx"))
    model.graph.input.append(
        onnx.helper.make_tensor_value_info("pixel_values", onnx.TensorProto.FLOAT, [1])
    )
    path = tmp_path / "vision.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ValueError, match=r"not a text encoder.*pixel_values"):
        EmbeddingModel(path, tiny_model_dir, tiny_engine.config, {})


def test_session_options_come_from_the_settings(make_tiny_engine: TinyEngineFactory) -> None:
    engine = make_tiny_engine(
        intra_op_parallelism=1, inter_op_parallelism=2, spin_control=False, memory_arena=False
    )
    options = engine.session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 2)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert options.enable_cpu_mem_arena is False


def test_settings_apply_live_and_rebuild_the_session_only_when_needed(
    make_tiny_engine: TinyEngineFactory,
) -> None:
    engine = make_tiny_engine(intra_op_parallelism=2, spin_control=True)
    texts = [SHORT, LONG, TOO_LONG]
    before = engine.embed(texts).vectors
    session = engine._sessions

    engine.apply_settings({"max_wait_ms": 5.0, "max_batch_size": 2})
    assert engine._sessions is session  # batching keys do not touch the session
    assert engine.settings["max_batch_size"] == 2

    engine.apply_settings({"intra_op_parallelism": 1, "spin_control": False})
    assert engine._sessions is not session
    options = engine.session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert _close(engine.embed(texts).vectors, before)


def test_settings_change_while_other_threads_embed(make_tiny_engine: TinyEngineFactory) -> None:
    engine = make_tiny_engine()
    texts = [SHORT, LONG, TOO_LONG, "house on the river"]
    expected = engine.embed(texts).vectors
    errors: list[BaseException] = []
    mismatches: list[int] = []
    stop = threading.Event()

    def embed_until_stopped() -> None:
        while not stop.is_set():
            try:
                if not _close(engine.embed(texts).vectors, expected):
                    mismatches.append(1)
            except BaseException as exc:
                errors.append(exc)
                return

    workers = [threading.Thread(target=embed_until_stopped) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        for round_ in range(6):
            engine.apply_settings({"intra_op_parallelism": 1 + round_ % 2})
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert errors == []
    assert mismatches == []


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def test_memory_does_not_ratchet_with_varied_input_shapes(
    make_tiny_engine: TinyEngineFactory,
) -> None:
    engine = make_tiny_engine(max_batch_size=256, max_batch_tokens=1 << 20)
    rng = random.Random(3)

    def varied_call() -> None:
        count = rng.randint(1, 256)
        engine.embed([" ".join(rng.choices(WORDS, k=rng.randint(0, 40))) for _ in range(count)])

    for _ in range(30):  # warm-up: the first calls load code and fill allocator caches
        varied_call()
    before = _rss()
    for _ in range(300):
        varied_call()
    growth_mb = (_rss() - before) / 2**20
    assert growth_mb < 25, f"RSS grew by {growth_mb:.0f} MB over 300 calls"


@pytest.mark.realmodel
def test_real_model_vectors_do_not_depend_on_batch_company(
    minilm_stored_model: StoredModel,  # noqa: F811
) -> None:
    engine = EmbeddingModel.from_stored(minilm_stored_model, {"max_batch_size": 4})
    rng = random.Random(11)
    words = "search vector index postgres table row column query fast small model text".split()
    texts = [" ".join(rng.choices(words, k=rng.randint(0, 120))) for _ in range(12)]
    together = engine.embed(texts).vectors
    alone = np.stack([engine.embed([text]).vectors[0] for text in texts])
    assert np.abs(together - alone).max() < 1e-5


def test_a_huge_text_is_cut_before_tokenizing_to_what_the_model_can_read(
    tiny_engine: EmbeddingModel,
) -> None:
    cap = tiny_engine.config.max_tokens * MAX_CHARS_PER_TOKEN
    huge = "the cat is on the house " * 200_000  # 4.8 million characters
    result = tiny_engine.embed([huge, huge[:cap], "short"])
    assert result.truncated == [True, True, False]
    np.testing.assert_array_equal(result.vectors[0], result.vectors[1])
    assert result.token_counts[0] == tiny_engine.config.max_tokens
    # Spaces do not count: a text that is long only in characters is still marked as cut.
    spaced = "cat" + " " * (cap + 10) + "house"
    assert tiny_engine.embed([spaced]).truncated == [True]
