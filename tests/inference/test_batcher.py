"""Dynamic batching across concurrent asyncio requests, on the generated tiny model."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from inference.batcher import BatcherClosedError, DynamicBatcher
from inference.engine import RUN_OVERHEAD_TOKENS, EmbeddingModel, InputTooLongError
from tests.inference.conftest import WrappedEngine

WORDS = "the cat dog house car tree water fire book music city river mountain".split()
TEXTS = [" ".join(WORDS[i % 13 :] + WORDS[: i % 7]) for i in range(16)]  # varied lengths


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(a, b, atol=1e-5, rtol=0))


class Batches:
    """An on_batch callback that records every run."""

    def __init__(self) -> None:
        self.runs: list[tuple[int, int, int, float, float]] = []

    def __call__(self, texts: int, tokens: int, padded: int, wait_s: float, run_s: float) -> None:
        self.runs.append((texts, tokens, padded, wait_s, run_s))


class ControlledModel(WrappedEngine):
    """The real tiny engine behind hooks: runs may be made to fail or to wait for a signal."""

    def __init__(self, engine: EmbeddingModel) -> None:
        super().__init__(engine)
        self.poison = engine.tokenize(["fire"]).ids[0][1]  # a run holding this token fails
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def run(
        self,
        ids: Sequence[Sequence[int]],
        slot: int = 0,
        *,
        alone: bool = False,
        groups: list[np.ndarray] | None = None,
    ) -> np.ndarray:
        self.started.set()
        self.release.wait(10)
        if any(self.poison in row for row in ids):
            raise RuntimeError("the model run failed")
        return super().run(ids, slot, alone=alone, groups=groups)


async def _queued_together(batcher: DynamicBatcher, *calls: Awaitable[Any]) -> list[Any]:
    """Await ``calls`` with all their requests queued before the worker looks at the queue.

    Otherwise a busy machine may let the worker take the first request alone, and the runs
    the test counts come out differently.
    """
    with batcher._cond:  # re-entrant: each embed() takes it again on this thread
        tasks = [asyncio.ensure_future(call) for call in calls]
        await asyncio.sleep(0)  # each task runs up to its wait, so its request is queued
    return await asyncio.gather(*tasks)


@pytest.fixture
def make_batcher(tiny_engine: EmbeddingModel) -> Iterator[Any]:
    made: list[DynamicBatcher] = []

    def make(model: Any = tiny_engine, **settings: Any) -> tuple[DynamicBatcher, Batches]:
        batches = Batches()
        batcher = DynamicBatcher(model, settings, on_batch=batches)
        made.append(batcher)
        return batcher, batches

    yield make
    for batcher in made:
        batcher.close()


def test_concurrent_single_text_requests_share_one_run(
    make_batcher: Any, tiny_engine: EmbeddingModel
) -> None:
    # A run is started as soon as it is full: 16 texts fill it, the long window never ends.
    batcher, batches = make_batcher(max_batch_size=16, max_wait_ms=1000)

    async def scenario() -> list[Any]:
        return await _queued_together(batcher, *(batcher.embed([text]) for text in TEXTS))

    results = asyncio.run(scenario())
    assert [run[0] for run in batches.runs] == [16]
    direct = tiny_engine.embed(TEXTS)
    for index, result in enumerate(results):
        assert result.vectors.shape == (1, 32)
        assert _close(result.vectors[0], direct.vectors[index])
        assert result.token_counts == [direct.token_counts[index]]


def test_a_lone_request_to_an_idle_batcher_does_not_wait_for_company(make_batcher: Any) -> None:
    batcher, batches = make_batcher(max_wait_ms=1000)
    for text in TEXTS[:3]:
        asyncio.run(batcher.embed([text]))
    # Each ran alone; had it waited out the one-second window, its queue wait would show it.
    assert [run[0] for run in batches.runs] == [1, 1, 1]
    assert all(run[3] < 1.0 for run in batches.runs)


def test_each_caller_gets_its_own_rows_in_its_own_order(
    make_batcher: Any, tiny_engine: EmbeddingModel
) -> None:
    batcher, batches = make_batcher(max_batch_size=5, max_wait_ms=20)
    requests = [TEXTS[i : i + 1 + i % 4] for i in range(12)]

    async def scenario() -> list[Any]:
        return await _queued_together(batcher, *(batcher.embed(texts) for texts in requests))

    results = asyncio.run(scenario())
    assert len(batches.runs) < len(requests)  # requests were merged
    assert sum(run[0] for run in batches.runs) == sum(map(len, requests))
    for texts, result in zip(requests, results, strict=True):
        direct = tiny_engine.embed(texts)
        assert _close(result.vectors, direct.vectors)
        assert result.token_counts == direct.token_counts
        assert result.truncated == direct.truncated


def test_each_caller_learns_which_of_its_inputs_were_cut(make_batcher: Any) -> None:
    batcher, _ = make_batcher(max_batch_size=4, max_wait_ms=20)
    too_long = " ".join(WORDS * 4)

    async def scenario() -> list[Any]:
        return await _queued_together(
            batcher, batcher.embed([TEXTS[0], too_long]), batcher.embed([too_long, TEXTS[1]])
        )

    first, second = asyncio.run(scenario())
    assert (first.truncated, second.truncated) == ([False, True], [True, False])
    assert first.token_counts[1] == second.token_counts[0] == 32


def test_large_request_is_split_across_runs(make_batcher: Any, tiny_engine: EmbeddingModel) -> None:
    batcher, batches = make_batcher(max_batch_size=4, max_batch_tokens=1 << 20, max_wait_ms=0)
    result = asyncio.run(batcher.embed(TEXTS, input_type="query"))
    assert [run[0] for run in batches.runs] == [4, 4, 4, 4]
    assert _close(result.vectors, tiny_engine.embed(TEXTS, input_type="query").vectors)


def test_token_budget_bounds_each_run(make_batcher: Any) -> None:
    batcher, batches = make_batcher(max_batch_size=64, max_batch_tokens=64, max_wait_ms=0)
    asyncio.run(batcher.embed(TEXTS))
    assert all(padded <= 64 for _, _, padded, _, _ in batches.runs)
    assert sum(run[0] for run in batches.runs) == len(TEXTS)


def test_on_batch_reports_texts_tokens_and_padding(make_batcher: Any) -> None:
    batcher, batches = make_batcher(max_batch_size=2, max_wait_ms=1000)
    texts = ["the cat", " ".join(WORDS * 2)]  # 4 and 28 tokens, padded to 28

    async def scenario() -> None:
        await _queued_together(batcher, batcher.embed(texts[:1]), batcher.embed(texts[1:]))

    asyncio.run(scenario())
    ((count, tokens, padded, wait_s, run_s),) = batches.runs
    assert (count, tokens, padded) == (2, 32, 56)
    assert wait_s >= 0 and run_s >= 0


def test_on_batch_counts_the_padding_of_each_sub_run_of_similar_lengths(
    make_batcher: Any, tiny_engine: EmbeddingModel
) -> None:
    batcher, batches = make_batcher(max_batch_size=16, max_batch_tokens=100_000, max_wait_ms=1000)
    short, long = ["the cat"] * 8, [" ".join(WORDS * 8)]
    long_tokens = int(tiny_engine.tokenize(long).lengths[0])
    # Long enough for the engine to run the eight short texts apart from the long one: one run
    # more costs less than padding them (see split_by_length).
    assert 8 * (long_tokens - 4) > RUN_OVERHEAD_TOKENS

    async def scenario() -> None:
        await _queued_together(batcher, batcher.embed(short), batcher.embed(long))

    asyncio.run(scenario())
    ((count, tokens, padded, _, _),) = batches.runs
    assert (count, tokens) == (9, 8 * 4 + long_tokens)
    # Each text padded only to the longest of its sub-run, not all nine to the long one.
    assert padded == tokens < 9 * long_tokens


def test_short_request_is_not_held_behind_a_bulk_one(make_batcher: Any) -> None:
    batcher, _ = make_batcher(max_batch_size=2, max_wait_ms=0)
    finished: list[str] = []

    async def timed(name: str, texts: list[str]) -> None:
        await batcher.embed(texts)
        finished.append(name)

    async def scenario() -> None:
        await _queued_together(batcher, timed("bulk", TEXTS * 8), timed("short", ["the cat"]))

    asyncio.run(scenario())
    assert finished == ["short", "bulk"]


def test_failing_run_fails_only_the_requests_in_it(
    make_batcher: Any, tiny_engine: EmbeddingModel
) -> None:
    batcher, _ = make_batcher(ControlledModel(tiny_engine), max_batch_size=1, max_wait_ms=0)

    async def scenario() -> list[Any]:
        return await asyncio.gather(
            batcher.embed(["the cat"]),
            batcher.embed(["fire house"]),
            batcher.embed(["dog", "tree"]),
            return_exceptions=True,
        )

    good, bad, other = asyncio.run(scenario())
    assert isinstance(bad, RuntimeError) and "run failed" in str(bad)
    assert _close(good.vectors, tiny_engine.embed(["the cat"]).vectors)
    assert _close(other.vectors, tiny_engine.embed(["dog", "tree"]).vectors)
    # The worker survives a failed run.
    again = asyncio.run(batcher.embed(["river"]))
    assert _close(again.vectors, tiny_engine.embed(["river"]).vectors)


def test_too_long_input_fails_only_its_request(make_batcher: Any) -> None:
    batcher, _ = make_batcher(max_wait_ms=5)

    async def scenario() -> list[Any]:
        return await asyncio.gather(
            batcher.embed(["the cat", " ".join(WORDS * 8)], truncate=False),
            batcher.embed(["the dog"], truncate=False),
            return_exceptions=True,
        )

    refused, fine = asyncio.run(scenario())
    assert isinstance(refused, InputTooLongError) and refused.index == 1
    assert fine.vectors.shape == (1, 32)


def test_bad_requests_are_refused_before_queueing(make_batcher: Any) -> None:
    batcher, batches = make_batcher()
    with pytest.raises(ValueError, match="input_type"):
        asyncio.run(batcher.embed(["x"], input_type="document"))
    empty = asyncio.run(batcher.embed([]))
    assert empty.vectors.shape == (0, 32)
    assert batches.runs == []


def test_settings_change_the_budget_live(make_batcher: Any) -> None:
    batcher, batches = make_batcher(max_batch_size=64, max_wait_ms=0)
    asyncio.run(batcher.embed(TEXTS[:6]))
    assert [run[0] for run in batches.runs] == [6]
    batcher.apply_settings({"max_batch_size": 2})
    asyncio.run(batcher.embed(TEXTS[:6]))
    assert [run[0] for run in batches.runs[1:]] == [2, 2, 2]


def test_close_fails_waiting_requests_and_refuses_new_ones(
    make_batcher: Any, tiny_engine: EmbeddingModel
) -> None:
    model = ControlledModel(tiny_engine)  # one session: the second request waits its turn
    model.release.clear()  # the first run waits until the test lets it go
    batcher, _ = make_batcher(model, max_batch_size=1, max_wait_ms=0)

    async def scenario() -> list[Any]:
        running = asyncio.ensure_future(batcher.embed(["the cat"]))
        waiting = asyncio.ensure_future(batcher.embed(["the dog"]))
        await asyncio.to_thread(model.started.wait, 10)
        closing = asyncio.ensure_future(asyncio.to_thread(batcher.close))
        while not batcher.closed:
            await asyncio.sleep(0.001)
        model.release.set()
        await closing
        return await asyncio.gather(running, waiting, return_exceptions=True)

    ran, refused = asyncio.run(scenario())
    # The run under way finishes; the request still waiting fails with a clear error.
    assert _close(ran.vectors, tiny_engine.embed(["the cat"]).vectors)
    assert isinstance(refused, BatcherClosedError) and "load the model again" in str(refused)
    with pytest.raises(BatcherClosedError):
        asyncio.run(batcher.embed(["the cat"]))


def test_request_whose_caller_gave_up_is_not_run(
    make_batcher: Any, tiny_engine: EmbeddingModel
) -> None:
    model = ControlledModel(tiny_engine)
    model.release.clear()
    batcher, batches = make_batcher(model, max_batch_size=1, max_wait_ms=0)

    async def scenario() -> Any:
        running = asyncio.ensure_future(batcher.embed(["the cat"]))
        abandoned = asyncio.ensure_future(batcher.embed(["the dog"]))
        await asyncio.to_thread(model.started.wait, 10)
        abandoned.cancel()
        await asyncio.sleep(0)
        model.release.set()
        result = await running
        # A request queued after the abandoned one shows that the worker moved past it.
        await batcher.embed(["the river"])
        return result

    asyncio.run(scenario())
    assert [run[0] for run in batches.runs] == [1, 1]


class ThreadRecorder(ControlledModel):
    """The controlled model, recording the thread of every run."""

    def __init__(self, engine: EmbeddingModel) -> None:
        super().__init__(engine)
        self.poison = -1  # no run fails
        self.threads: list[str] = []

    def run(
        self,
        ids: Sequence[Sequence[int]],
        slot: int = 0,
        *,
        alone: bool = False,
        groups: list[np.ndarray] | None = None,
    ) -> np.ndarray:
        self.threads.append(threading.current_thread().name)
        return super().run(ids, slot, alone=alone, groups=groups)


def test_a_lone_short_request_runs_on_the_callers_thread(
    make_batcher: Any, tiny_engine: EmbeddingModel
) -> None:
    model = ThreadRecorder(tiny_engine)
    batcher, batches = make_batcher(model, max_wait_ms=1000)
    caller = threading.current_thread().name
    result = asyncio.run(batcher.embed([TEXTS[3]]))
    assert model.threads == [caller]  # no hand-off to a worker and back
    assert _close(result.vectors[0], tiny_engine.embed([TEXTS[3]]).vectors[0])
    assert [run[0] for run in batches.runs] == [1]  # still counted as a run
    # Several texts, or a long one, go to the workers.
    asyncio.run(batcher.embed(TEXTS[:2]))
    asyncio.run(batcher.embed(["the cat " * 200]))
    assert all(name.startswith("embedding-batcher-") for name in model.threads[1:])
    assert len(model.threads) == 3


def test_concurrent_callers_share_a_run_instead_of_running_alone(
    make_batcher: Any, tiny_engine: EmbeddingModel
) -> None:
    model = ThreadRecorder(tiny_engine)
    batcher, batches = make_batcher(model, max_batch_size=16, max_wait_ms=50)

    async def scenario() -> list[Any]:
        # Started together, as requests that reached the event loop at the same time: each
        # sees the others under way, and none runs alone on the loop.
        return await asyncio.gather(*(batcher.embed([text]) for text in TEXTS[:8]))

    results = asyncio.run(scenario())
    assert "MainThread" not in model.threads
    assert sum(run[0] for run in batches.runs) == 8 and len(batches.runs) < 8
    direct = tiny_engine.embed(TEXTS[:8]).vectors
    for index, result in enumerate(results):
        assert _close(result.vectors[0], direct[index])


def test_a_lone_request_that_is_too_long_fails_on_the_callers_thread_like_any_other(
    make_batcher: Any,
) -> None:
    batcher, _ = make_batcher()
    with pytest.raises(InputTooLongError):
        asyncio.run(batcher.embed([" ".join(["cat"] * 200)], truncate=False))
    # And the batcher goes on serving.
    assert asyncio.run(batcher.embed(["cat"])).vectors.shape == (1, 32)
