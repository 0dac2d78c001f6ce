"""Prometheus metrics of the sidecar, in a registry of its own (one per app instance).

Tokens per second is ``rate(inference_tokens_total[1m])``; the batcher reports every model run
through ``Metrics.batch_callback(model_uri)``.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
)  # fmt: skip
_BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 262144, 1048576)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # (route, method, status) -> its children of the two request metrics
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.requests = Counter(
            "inference_requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "inference_request_duration_seconds",
            "Time from receiving a request to sending its last byte.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "inference_errors",
            "Error responses by error code (the error.code of the JSON body).",
            ["code"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "inference_queue_wait_seconds",
            "Time texts waited in the dynamic batcher before their model run started.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_run = Histogram(
            "inference_batch_run_seconds",
            "Duration of one model run (tokenization, ONNX Runtime, pooling).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "inference_batch_size",
            "Texts per model run.",
            ["model"],
            buckets=_BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "inference_batch_tokens",
            "Real (unpadded) tokens per model run.",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.batch_padded_tokens = Histogram(
            "inference_batch_padded_tokens",
            "Tokens per model run including padding: each text padded to the longest of its "
            "sub-run of similar lengths.",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "inference_tokens",
            "Tokens embedded; tokens per second is rate() of this counter.",
            ["model"],
            registry=r,
        )
        self.texts = Counter(
            "inference_texts",
            "Texts embedded.",
            ["model"],
            registry=r,
        )
        self.models_loaded = Gauge(
            "inference_models_loaded",
            "Models loaded in this process.",
            registry=r,
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:  # the labels are looked up once per route, method and status
            children = (
                self.requests.labels(route, method, str(status)),
                self.request_duration.labels(route),
            )
            self._request_children[key] = children
        count, duration = children
        count.inc()
        duration.observe(seconds)

    def observe_error(self, code: str) -> None:
        self.errors.labels(code).inc()

    def batch_callback(self, model_uri: str) -> Callable[[int, int, int, float, float], None]:
        """The batcher's ``on_batch`` for one model; may be called from any thread."""
        queue_wait = self.queue_wait.labels(model_uri)
        run = self.batch_run.labels(model_uri)
        size = self.batch_size.labels(model_uri)
        tokens_hist = self.batch_tokens.labels(model_uri)
        padded_hist = self.batch_padded_tokens.labels(model_uri)
        tokens_total = self.tokens.labels(model_uri)
        texts_total = self.texts.labels(model_uri)

        def on_batch(
            texts: int, tokens: int, padded_tokens: int, queue_wait_s: float, run_s: float
        ) -> None:
            queue_wait.observe(queue_wait_s)
            run.observe(run_s)
            size.observe(texts)
            tokens_hist.observe(tokens)
            padded_hist.observe(padded_tokens)
            tokens_total.inc(tokens)
            texts_total.inc(texts)

        return on_batch

    def render(self) -> bytes:
        return generate_latest(self.registry)
