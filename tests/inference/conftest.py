"""Fixtures of the inference tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from inference.engine import EmbeddingModel
from inference.modelconfig import read_model_config
from tests.fixtures.sidecar import SidecarProcess, make_store_dir

MATRYOSHKA_DIMENSIONS = [8, 16]

# -- engine and batcher tests -----------------------------------------------------------------


def _load_tiny_engine(directory: Path, config: Any = None, **settings: Any) -> EmbeddingModel:
    return EmbeddingModel(
        directory / "onnx" / "model.onnx",
        directory,
        config or read_model_config(directory),
        settings,
    )


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path) -> EmbeddingModel:
    """The tiny mean-pooling model, shared: tests must not change its settings. One session,
    so that a batcher over it has one worker and its runs follow one another
    (tests/inference/test_layout.py covers several)."""
    return _load_tiny_engine(tiny_model_dir, engine_sessions=1)


@pytest.fixture(scope="session")
def tiny_cls_engine(tiny_cls_model_dir: Path) -> EmbeddingModel:
    """The tiny CLS-pooling model, shared: tests must not change its settings."""
    return _load_tiny_engine(tiny_cls_model_dir)


@pytest.fixture
def make_tiny_engine(tiny_model_dir: Path) -> Callable[..., EmbeddingModel]:
    """A fresh tiny engine of the test's own: ``make_tiny_engine(config=None, **settings)``."""

    def make(config: Any = None, **settings: Any) -> EmbeddingModel:
        return _load_tiny_engine(tiny_model_dir, config, **settings)

    return make


# -- sidecar tests ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(sidecar: SidecarProcess) -> Iterator[httpx.Client]:
    """An HTTP client of the shared sidecar, for tests of its routes."""
    with httpx.Client(base_url=sidecar.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def matryoshka_uri(
    sidecar: SidecarProcess, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The tiny model in store layout, registered with a manifest that declares
    ``matryoshka_dimensions`` (MATRYOSHKA_DIMENSIONS): ``dimensions`` may cut its vectors."""
    uri = "tiny-matryoshka:v1"
    store_dir = make_store_dir(
        tiny_model_dir,
        tmp_path_factory.mktemp("matryoshka") / "v1",
        uri=uri,
        matryoshka_dimensions=MATRYOSHKA_DIMENSIONS,
    )
    sidecar.client.register(uri, str(store_dir))
    yield uri
    sidecar.client.unregister(uri)


class WrappedEngine:
    """The real engine as a batcher sees it (config, sessions, tokenize, run_rows), for tests
    that watch or steer its runs by overriding ``run``."""

    def __init__(self, engine: EmbeddingModel) -> None:
        self.engine = engine
        self.config = engine.config

    @property
    def sessions(self) -> int:
        return self.engine.sessions

    def tokenize(self, texts: Sequence[str], **options: Any) -> Any:
        return self.engine.tokenize(texts, **options)

    def run(
        self,
        ids: Sequence[Sequence[int]],
        slot: int = 0,
        *,
        alone: bool = False,
        groups: list[np.ndarray] | None = None,
    ) -> np.ndarray:
        return self.engine.run(ids, slot, alone=alone, groups=groups)

    def run_rows(
        self,
        rows: Sequence[Sequence[int]],
        slot: int = 0,
        *,
        alone: bool = False,
        groups: list[np.ndarray] | None = None,
    ) -> np.ndarray:
        # What the batcher calls: through ``run``, which the tests override.
        return self.run(rows, slot, alone=alone, groups=groups)
