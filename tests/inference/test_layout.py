"""The engine's layout on the machine: how many ONNX Runtime sessions of how many threads.

The resolution from the settings is pure (cores are a parameter); the rest runs the real tiny
model on real ONNX Runtime sessions, the batcher's real worker threads and the real sidecar.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from inference import sidecar_settings
from inference.batcher import DynamicBatcher
from inference.engine import EmbeddingModel
from inference.sidecar_settings import TIMES, SettingsFile, SettingsValidationError, layout
from inference.store import StoredModel
from tests.fixtures.realmodel import minilm_stored_model  # noqa: F401
from tests.fixtures.sidecar import SidecarProcess
from tests.inference.conftest import WrappedEngine

WORDS = "the cat dog house car tree water fire book music city river mountain".split()
TEXTS = [" ".join(WORDS[i % 13 :] + WORDS[: i % 7] + WORDS[: i % 5]) for i in range(48)]


@pytest.mark.parametrize(
    ("sessions", "threads", "cores", "expected"),
    [
        (0, 0, 1, (1, 1, 0)),
        (0, 0, 2, (2, 1, 2)),  # batch sessions of one thread, lone requests on both cores
        (0, 0, 6, (2, 3, 6)),
        (0, 0, 8, (2, 4, 8)),
        (0, 0, 16, (4, 4, 16)),  # sessions of at most 4 threads
        (0, 0, 18, (4, 4, 16)),
        (0, 0, 64, (16, 4, 64)),
        (4, 0, 16, (4, 4, 16)),  # sessions chosen: the cores shared out among them
        (3, 0, 16, (3, 5, 15)),
        (32, 0, 16, (32, 1, 32)),
        (1, 0, 16, (1, 16, 0)),  # one session: it runs lone requests too
        (0, 8, 16, (2, 8, 16)),  # threads chosen: as many sessions as the cores hold
        (0, 32, 16, (1, 32, 0)),
        (2, 3, 16, (2, 3, 6)),  # both chosen: taken as they are
    ],
)
def test_the_layout_follows_the_settings_and_the_cores(
    sessions: int, threads: int, cores: int, expected: tuple[int, int, int]
) -> None:
    values = {"engine_sessions": sessions, "intra_op_parallelism": threads}
    chosen = layout(values, cores=cores)
    assert (chosen.sessions, chosen.threads, chosen.lone_threads) == expected
    assert chosen.cores == cores
    # The lone-request session is a setting; without it lone requests use a batch session.
    assert layout({**values, "lone_request_session": False}, cores=cores).lone_threads == 0


def test_the_defaults_choose_the_layout_from_the_machine() -> None:
    defaults = sidecar_settings.defaults()
    assert (defaults["engine_sessions"], defaults["intra_op_parallelism"]) == (0, 0)
    chosen = layout(defaults)
    assert chosen.cores == sidecar_settings.physical_cores()
    assert chosen.sessions * chosen.threads <= sidecar_settings.usable_cpus()
    assert "session" in chosen.describe() and "thread" in chosen.describe()


def test_a_layout_with_more_threads_than_cpus_is_refused_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    store = SettingsFile(tmp_path / "settings.json")
    store.update({"max_wait_ms": 3})
    before = store.path.read_text()
    cpus = sidecar_settings.usable_cpus()
    with pytest.raises(SettingsValidationError) as refused:
        store.update({"engine_sessions": cpus + 1, "intra_op_parallelism": 1, "max_wait_ms": 4})
    message = refused.value.errors["engine_sessions"]
    assert f"{cpus + 1} sessions {TIMES} 1 thread is" in message and f"{cpus} CPUs" in message
    assert store.path.read_text() == before and store.values()["max_wait_ms"] == 3
    # Blamed on the setting that was changed.
    with pytest.raises(SettingsValidationError) as refused:
        store.update({"intra_op_parallelism": 4 * cpus})
    assert set(refused.value.errors) == {"intra_op_parallelism"}
    # Per-setting bounds come first and name their own key.
    with pytest.raises(SettingsValidationError) as refused:
        store.update({"engine_sessions": -1})
    assert "at least 0" in refused.value.errors["engine_sessions"]
    # What fits the machine is taken.
    assert (
        store.update({"engine_sessions": 1, "intra_op_parallelism": cpus})["engine_sessions"] == 1
    )


def test_several_sessions_give_the_same_vectors_as_one(
    make_tiny_engine: Any, tiny_engine: EmbeddingModel
) -> None:
    engine = make_tiny_engine(engine_sessions=3, intra_op_parallelism=1)
    assert engine.sessions == 3
    assert [engine.session_options(slot).intra_op_num_threads for slot in range(3)] == [1, 1, 1]
    assert engine.session_options(alone=True).intra_op_num_threads == 3
    ids = engine.tokenize(TEXTS[:16]).ids
    single = tiny_engine.run(ids)
    for slot in range(3):
        assert np.array_equal(engine.run(ids, slot), single)
    assert np.array_equal(engine.run(ids, alone=True), single)
    # Bulk embedding spreads its batches over the sessions; rows stay in input order.
    spread = make_tiny_engine(engine_sessions=3, intra_op_parallelism=1, max_batch_size=4)
    alone = make_tiny_engine(engine_sessions=1, intra_op_parallelism=1, max_batch_size=4)
    assert np.array_equal(spread.embed(TEXTS).vectors, alone.embed(TEXTS).vectors)


@pytest.mark.realmodel
def test_real_model_sessions_and_threads_give_identical_vectors(
    minilm_stored_model: StoredModel,  # noqa: F811
) -> None:
    texts = [" ".join(WORDS[i % 13 :] * (1 + i % 9)) for i in range(40)]
    one = EmbeddingModel.from_stored(
        minilm_stored_model, {"engine_sessions": 1, "intra_op_parallelism": 2, "max_batch_size": 8}
    )
    two = EmbeddingModel.from_stored(
        minilm_stored_model, {"engine_sessions": 2, "intra_op_parallelism": 1, "max_batch_size": 8}
    )
    assert np.array_equal(one.embed(texts).vectors, two.embed(texts).vectors)


class SlotRecorder(WrappedEngine):
    """The real tiny engine, recording which session each run went to and which overlapped."""

    def __init__(self, engine: EmbeddingModel, hold_s: float = 0.05) -> None:
        super().__init__(engine)
        self.hold_s = hold_s
        self.lock = threading.Lock()
        self.slots: list[int] = []
        self.running = 0
        self.most_at_once = 0

    def run(
        self,
        ids: Sequence[Sequence[int]],
        slot: int = 0,
        *,
        alone: bool = False,
        groups: list[np.ndarray] | None = None,
    ) -> np.ndarray:
        with self.lock:
            self.slots.append(slot)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(self.hold_s)  # long enough for the other workers to take runs meanwhile
            return super().run(ids, slot, alone=alone, groups=groups)
        finally:
            with self.lock:
                self.running -= 1


def test_dynamic_batching_feeds_every_session(
    make_tiny_engine: Any, tiny_engine: EmbeddingModel
) -> None:
    model = SlotRecorder(make_tiny_engine(engine_sessions=3, intra_op_parallelism=1))
    batcher = DynamicBatcher(model, {"max_batch_size": 4})  # type: ignore[arg-type]
    try:
        result = asyncio.run(batcher.embed(TEXTS))
    finally:
        batcher.close()
    assert len(model.slots) == len(TEXTS) // 4
    assert set(model.slots) == {0, 1, 2}
    assert model.most_at_once == 3  # the sessions ran at once
    # The same runs on one session give the same vectors.
    alone = make_tiny_engine(engine_sessions=1, intra_op_parallelism=1, max_batch_size=4)
    assert np.array_equal(result.vectors, alone.embed(TEXTS).vectors)


def _workers(batcher: DynamicBatcher) -> list[str]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with batcher._cond:
            threads = dict(batcher._workers)
        if all(thread.is_alive() for thread in threads.values()):
            return sorted(thread.name for thread in threads.values())
        time.sleep(0.01)
    raise AssertionError("the batcher's workers did not settle")


def test_the_layout_applies_live_while_requests_run(
    make_tiny_engine: Any, tiny_engine: EmbeddingModel
) -> None:
    engine = make_tiny_engine(engine_sessions=1, intra_op_parallelism=1, max_batch_size=4)
    batcher = DynamicBatcher(engine, {"max_batch_size": 4})
    expected = engine.embed(TEXTS).vectors
    stop = threading.Event()
    failures: list[BaseException] = []
    served = [0]

    def embed_until_stopped() -> None:
        async def loop() -> None:
            while not stop.is_set():
                result = await batcher.embed(TEXTS)
                if not np.array_equal(result.vectors, expected):
                    raise AssertionError("vectors changed with the layout")
                served[0] += 1

        try:
            asyncio.run(loop())
        except BaseException as exc:
            failures.append(exc)

    client = threading.Thread(target=embed_until_stopped)
    client.start()
    try:
        assert _workers(batcher) == ["embedding-batcher-0"]
        for sessions in (3, 1, 2):
            change = {"engine_sessions": sessions}
            engine.apply_settings(change)
            batcher.apply_settings(change)
            assert engine.sessions == sessions
            deadline = time.monotonic() + 10
            while len(_workers(batcher)) != sessions and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _workers(batcher) == [f"embedding-batcher-{i}" for i in range(sessions)]
    finally:
        stop.set()
        client.join(30)
        batcher.close()
    assert failures == []
    assert served[0] > 0
    assert _workers(batcher) == []  # closed: every worker left


def test_the_sidecar_applies_a_layout_live_and_refuses_one_the_machine_cannot_run(
    http: httpx.Client, sidecar: SidecarProcess
) -> None:
    before = http.get("/settings").json()
    vectors = http.post("/v1/embeddings", json={"model": "tiny:v1", "input": TEXTS}).json()
    try:
        answer = http.put("/settings", json={"engine_sessions": 2, "intra_op_parallelism": 1})
        assert answer.status_code == 200, answer.text
        layout_now = http.get("/health").json()["layout"]
        assert (layout_now["sessions"], layout_now["threads"]) == (2, 1)
        again = http.post("/v1/embeddings", json={"model": "tiny:v1", "input": TEXTS}).json()
        assert [row["embedding"] for row in again["data"]] == [
            row["embedding"] for row in vectors["data"]
        ]
        too_many = sidecar_settings.usable_cpus() + 1
        refused = http.put("/settings", json={"engine_sessions": too_many, "max_wait_ms": 7})
        assert refused.status_code == 422
        error = refused.json()["error"]
        assert set(error["details"]) == {"engine_sessions"}
        assert "CPUs" in error["details"]["engine_sessions"]
        assert http.get("/settings").json()["max_wait_ms"] == before["max_wait_ms"]
        stored = json.loads((sidecar.var_dir / "sidecar" / "settings.json").read_text())
        assert stored["engine_sessions"] == 2
    finally:
        http.put(
            "/settings",
            json={k: before[k] for k in ("engine_sessions", "intra_op_parallelism")},
        )
