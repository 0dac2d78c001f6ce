"""Dynamic batching: concurrent requests for one model share model runs.

The same batcher serves embedding models (``embed``: a row per text) and rerankers
(``rerank``: a row per (query, document) pair); what it needs of a model is ``sessions`` and
``run_rows``, and of a request its rows' token lengths (``Rows``).

Each ``DynamicBatcher`` owns one worker thread per ONNX Runtime session of its model (the
layout of ``sidecar_settings``). Requests from asyncio callers are queued; one worker at a time
(the planner) tokenises the new ones, then assembles a run: a lone waiting request, with no sign
of concurrent clients, runs at once; otherwise the planner waits at most ``max_wait_ms`` after
the oldest waiting request for others to arrive and fills the run up to ``max_batch_size``
texts and ``max_batch_tokens`` padded tokens. It then lets go of planning and runs the model on
its own session (ONNX Runtime releases the GIL, so the event loop keeps serving meanwhile),
while the next worker plans the next run; each request gets its own rows as its runs finish.
With several sessions a bulk request's runs go to all of them at once.

A lone short request (one text of at most ``INLINE_MAX_CHARS``) that finds nothing queued, no
run under way and no concurrent callers lately runs on the caller's own thread instead: a
lone query from SQL pays for the model, not for two thread hand-offs.

A large request is cut into several runs, longest inputs first so that each run pads little;
small concurrent requests share one run. After a run, a request that still has inputs left goes
to the back of the queue, so a bulk request never holds up a short one for longer than a run.
A run that fails fails the requests that had inputs in it, and only those.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from inference import sidecar_settings
from inference.engine import (
    SESSION_KEYS,
    EmbeddingModel,
    EmbedResult,
    batch_fits,
    padded_tokens,
    split_by_length,
)
from inference.reranker import RerankModel, RerankResult, check_pair_inputs

log = logging.getLogger(__name__)

# on_batch(texts, tokens, padded_tokens, queue_wait_s, run_s), called after every model run.
BatchCallback = Callable[[int, int, int, float, float], None]

_JOIN_TIMEOUT_S = 30.0
# How long a run that served several callers counts as a sign that concurrent clients are about.
_CONCURRENCY_MEMORY_S = 0.1
# A lone request of at most this many characters, arriving while nothing else is queued or
# running, runs on the caller's thread: a lone query pays for the model and not for handing
# the request to a worker and its rows back (about 0.1-0.2 ms on two cores). The caller's event
# loop waits meanwhile, so only a short text qualifies.
INLINE_MAX_CHARS = 1024


class BatcherClosedError(RuntimeError):
    """The model's batcher was closed (the model is being unloaded) before the request ran."""


class Rows(Protocol):
    """A request's model inputs, tokenised: a row per text (or pair), in request order."""

    lengths: np.ndarray  # int64 tokens of each row

    def rows(self, indices: Sequence[int] | np.ndarray) -> list[Any]:
        """The rows at ``indices``, as the model's ``run_rows`` takes them."""
        ...


class BatchModel(Protocol):
    """What the batcher runs: ``EmbeddingModel`` or ``RerankModel``."""

    @property
    def sessions(self) -> int: ...

    def run_rows(
        self,
        rows: Sequence[Any],
        slot: int = 0,
        *,
        alone: bool = False,
        groups: list[np.ndarray] | None = None,
    ) -> np.ndarray: ...


@dataclass(eq=False)
class _Request:
    count: int  # rows
    tokenize: Callable[[], Rows]  # run by a worker (or inline), off the event loop
    finish: Callable[[Rows, np.ndarray], Any]  # the caller's result from the rows' outputs
    row_shape: tuple[int, ...]  # of one row's output: (dimensions,) or () for a score
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    enqueued: float
    tokenized: Rows | None = None
    order: np.ndarray | None = None  # indices of rows, longest first: the order they run in
    scheduled: int = 0  # how many of ``order`` have gone into runs
    remaining: int = 0  # rows still to come back from runs
    out: np.ndarray | None = None
    finished: bool = False

    @property
    def live(self) -> bool:
        # A caller that gave up (its task was cancelled) cancels the future: drop its work.
        return not self.finished and not self.future.cancelled()

    def resolve(self, result: Any) -> None:
        self.finished = True
        self._deliver(lambda: self.future.set_result(result))

    def fail(self, error: BaseException) -> None:
        self.finished = True
        self._deliver(lambda: self.future.set_exception(error))

    def _deliver(self, action: Callable[[], None]) -> None:
        def deliver() -> None:
            if not self.future.done():
                action()

        # A closed event loop refuses the call: then nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(deliver)


@dataclass
class _Run:
    parts: list[tuple[_Request, np.ndarray]] = field(default_factory=list)  # request, text indices
    count: int = 0
    width: int = 0
    full: bool = False  # the next waiting input did not fit: no point waiting for more


class DynamicBatcher:
    """Batches concurrent ``embed`` (or ``rerank``) calls for one model; see the module
    docstring."""

    def __init__(
        self,
        model: EmbeddingModel | RerankModel,
        settings: Mapping[str, Any],
        on_batch: BatchCallback | None = None,
    ) -> None:
        self.model = model
        self.on_batch = on_batch
        self._settings = {**sidecar_settings.defaults(), **settings}
        self._cond = threading.Condition()
        self._incoming: deque[_Request] = deque()  # guarded by _cond
        self._closed = False  # guarded by _cond
        self._workers: dict[int, threading.Thread] = {}  # slot -> its thread; guarded by _cond
        # Planning (admitting requests, choosing a run) is one worker's at a time.
        self._planning = threading.Lock()
        self._pending: deque[_Request] = deque()  # tokenised; guarded by _planning
        # Runs of one request may finish on several workers at once: its rows and its count of
        # rows still to come are guarded by this lock.
        self._delivery = threading.Lock()
        self._last_run_end = 0.0
        self._last_run_callers = 0
        self._callers = 0  # embed() calls under way; guarded by _cond
        self._running = 0  # model runs under way, workers' and inline; guarded by _cond
        self._resize()

    # -- callers (event loop side) ------------------------------------------------------------

    async def embed(
        self, texts: Sequence[str], *, input_type: str | None = None, truncate: bool = True
    ) -> EmbedResult:
        """Embed ``texts`` in shared model runs; same result as ``EmbeddingModel.embed``."""
        model: Any = self.model  # an EmbeddingModel, or what stands for one
        model.config.prefix(input_type)  # a bad input_type fails here, not in the worker
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"input {index} must be a string, got {type(text).__name__}")
        dimensions = model.config.dimensions
        if not texts:
            empty = np.empty((0, dimensions), dtype=np.float32)
            return EmbedResult(vectors=empty, token_counts=[], truncated=[])

        def finish(tokenized: Rows, vectors: np.ndarray) -> EmbedResult:
            return EmbedResult(
                vectors=vectors,
                token_counts=tokenized.lengths.tolist(),
                truncated=tokenized.truncated.tolist(),  # type: ignore[attr-defined]
            )

        return await self._submit(
            len(texts),
            lambda: model.tokenize(texts, input_type=input_type, truncate=truncate),
            finish,
            (dimensions,),
            inline=len(texts) == 1 and len(texts[0]) <= INLINE_MAX_CHARS,
        )

    async def rerank(
        self, query: str, documents: Sequence[str], *, raw: bool = False
    ) -> RerankResult:
        """Score ``documents`` against ``query`` in shared model runs; same scores as
        ``RerankModel.score`` (pairs of several requests may share a run)."""
        model: Any = self.model  # a RerankModel
        check_pair_inputs(query, documents)  # here, not in the worker that tokenises
        if not documents:
            empty = np.empty(0, dtype=np.float32)
            return RerankResult(scores=empty, token_counts=[], truncated=[])

        def finish(tokenized: Rows, logits: np.ndarray) -> RerankResult:
            return RerankResult(
                scores=logits if raw else model.activate(logits),
                token_counts=tokenized.lengths.tolist(),
                truncated=tokenized.truncated.tolist(),  # type: ignore[attr-defined]
            )

        chars = len(query) + sum(map(len, documents))
        return await self._submit(
            len(documents),
            lambda: model.tokenize_pairs(query, documents),
            finish,
            (),
            inline=len(documents) == 1 and chars <= INLINE_MAX_CHARS,
        )

    async def _submit(
        self,
        count: int,
        tokenize: Callable[[], Rows],
        finish: Callable[[Rows, np.ndarray], Any],
        row_shape: tuple[int, ...],
        *,
        inline: bool,
    ) -> Any:
        with self._cond:
            self._callers += 1
        try:
            if inline:
                alone = await self._run_alone(count, tokenize, finish)
                if alone is not None:
                    return alone
            loop = asyncio.get_running_loop()
            request = _Request(
                count=count,
                tokenize=tokenize,
                finish=finish,
                row_shape=row_shape,
                loop=loop,
                future=loop.create_future(),
                enqueued=time.monotonic(),
            )
            with self._cond:
                if self._closed:
                    raise self._closed_error()
                self._incoming.append(request)
                self._cond.notify()
            return await request.future
        finally:
            with self._cond:
                self._callers -= 1

    async def _run_alone(
        self,
        count: int,
        tokenize: Callable[[], Rows],
        finish: Callable[[Rows, np.ndarray], Any],
    ) -> Any | None:
        """Run a lone short request here, on the caller's thread, when it has no company:
        nothing queued, no run under way, no concurrent callers lately. None: it has company,
        and goes to the queue to share a run."""
        if self._concurrent_recently():
            return None
        # Requests that reached the event loop in the same turn as this one (say, while an
        # earlier lone run held it) enter embed() while this one yields: then it is not alone.
        await asyncio.sleep(0)
        with self._cond:
            if self._closed or self._callers > 1 or self._running or self._incoming:
                return None
            self._running += 1
        try:
            started = time.monotonic()
            tokenized = tokenize()
            out = self.model.run_rows(tokenized.rows(range(count)), alone=True)
            tokens = int(tokenized.lengths.sum())
            self._ran(started, callers=1, texts=count, tokens=tokens, padded=tokens, wait_s=0.0)
            return finish(tokenized, out)
        finally:
            with self._cond:
                self._running -= 1

    def apply_settings(self, settings: Mapping[str, Any]) -> None:
        """Take new batching settings (window, budget); they apply from the next run on.

        Session options are the model's business: ``EmbeddingModel.apply_settings`` may
        rebuild a session, which is slow, so the caller runs that off the event loop.
        """
        with self._cond:
            self._settings = {**self._settings, **settings}
            self._cond.notify()  # a worker inside its wait window re-reads the window
        if any(key in settings for key in SESSION_KEYS):
            self._resize()

    def _resize(self) -> None:
        """One worker per session of the model: start the missing ones; a worker whose slot
        is past the sessions there are leaves after its current run."""
        with self._cond:
            if self._closed:
                return
            for slot in range(self.model.sessions):
                if slot not in self._workers:
                    thread = threading.Thread(
                        target=self._work,
                        args=(slot,),
                        name=f"embedding-batcher-{slot}",
                        daemon=True,
                    )
                    self._workers[slot] = thread
                    thread.start()
            self._cond.notify_all()

    def close(self) -> None:
        """Stop the worker; requests that have not completed fail with BatcherClosedError.

        A run already under way finishes first (its requests still get their rows if that
        completes them).
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            workers = list(self._workers.values())
        deadline = time.monotonic() + _JOIN_TIMEOUT_S
        for thread in workers:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        self._fail_leftovers()

    @property
    def closed(self) -> bool:
        return self._closed

    def _closed_error(self) -> BatcherClosedError:
        return BatcherClosedError(
            "the model was unloaded (its batcher is closed) before this request ran; "
            "load the model again and retry"
        )

    # -- worker thread ------------------------------------------------------------------------

    def _work(self, slot: int) -> None:
        try:
            while True:
                with self._planning:
                    if self._retired(slot) or not self._gather():
                        return
                    run = self._plan()
                if run.parts:
                    self._execute(run, slot)
        except Exception:
            log.exception("the embedding batcher stopped on an unexpected error")
            with self._cond:
                # New requests must fail, not wait forever.
                self._closed = True
                self._cond.notify_all()
        finally:
            with self._cond:
                if self._workers.get(slot) is threading.current_thread():
                    del self._workers[slot]
                last = self._closed and not self._workers
            if last:
                self._fail_leftovers()

    def _retired(self, slot: int) -> bool:
        """Whether the sessions shrank below this worker's slot: it leaves (under _planning)."""
        return slot >= self.model.sessions

    def _fail_leftovers(self) -> None:
        """Once closed: fail every request that has not completed."""
        with self._cond:
            leftovers = list(self._incoming)
            self._incoming.clear()
        with self._planning:
            leftovers += self._pending
            self._pending.clear()
        for request in leftovers:
            if request.live:
                request.fail(self._closed_error())

    def _take_incoming(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` (None: until something happens) for new requests and admit
        them. Returns False once the batcher is closed."""
        with self._cond:
            if not self._incoming and not self._closed and (timeout is None or timeout > 0):
                self._cond.wait(timeout)
            if self._closed:
                return False
            arrived = list(self._incoming)
            self._incoming.clear()
        for request in arrived:
            self._admit(request)
        return True

    def _gather(self) -> bool:
        """Collect requests until a run is worth starting; False once closed."""
        # Requests that came in during the last run join now, so that they get their turn
        # even while a bulk request still has inputs left.
        if not self._take_incoming(0):
            return False
        while not self._closed:
            live = [r for r in self._pending if r.live]
            if not live:
                self._pending.clear()
                if not self._take_incoming(None):
                    return False
                continue
            # A lone waiting request, when the last run served a single caller (or ran a while
            # ago), has no company in sight: it runs at once instead of waiting out the window,
            # so a lone SQL session does not pay for batching. Once runs serve several callers,
            # concurrent clients are about and the window gathers them.
            if len(live) == 1 and not self._concurrent_recently():
                return True
            wait_s = float(self._settings["max_wait_ms"]) / 1000.0
            remaining = min(r.enqueued for r in live) + wait_s - time.monotonic()
            if remaining <= 0 or self._plan(dry_run=True).full:
                return True
            if not self._take_incoming(remaining):
                return False
        return False

    def _concurrent_recently(self) -> bool:
        recent = time.monotonic() - self._last_run_end < _CONCURRENCY_MEMORY_S
        return recent and self._last_run_callers > 1

    def _admit(self, request: _Request) -> None:
        if not request.live:
            return
        try:
            tokenized = request.tokenize()
        except Exception as exc:  # too long with truncate=False, or a tokenizer failure
            request.fail(exc)
            return
        request.tokenized = tokenized
        request.order = np.argsort(-tokenized.lengths, kind="stable")
        request.remaining = request.count
        request.out = np.empty((request.count, *request.row_shape), dtype=np.float32)
        self._pending.append(request)

    def _plan(self, *, dry_run: bool = False) -> _Run:
        """Choose the inputs of the next run from the waiting requests, oldest first."""
        settings = self._settings
        max_size = int(settings["max_batch_size"])
        max_tokens = int(settings["max_batch_tokens"])
        run = _Run()
        for request in self._pending:
            if not request.live:
                continue
            assert request.tokenized is not None and request.order is not None
            lengths = request.tokenized.lengths
            start = stop = request.scheduled
            width = run.width
            while stop < len(request.order):
                candidate = max(width, int(lengths[request.order[stop]]))
                if not batch_fits(run.count + stop - start + 1, candidate, max_size, max_tokens):
                    run.full = True
                    break
                width = candidate
                stop += 1
            if stop > start:
                run.parts.append((request, request.order[start:stop]))
                run.count += stop - start
                run.width = width
            if run.full:
                break
        # Full also when not even the shortest possible input could join.
        run.full = run.full or not batch_fits(run.count + 1, run.width, max_size, max_tokens)
        if not dry_run:
            for request, indices in run.parts:
                request.scheduled += len(indices)
            # Requests with inputs left go behind the ones that have not had a turn yet;
            # requests whose inputs are all in this run leave the queue.
            in_run = {request for request, _ in run.parts}
            waiting = [r for r in self._pending if r.live and r.scheduled < r.count]
            self._pending = deque(
                [r for r in waiting if r not in in_run] + [r for r in waiting if r in in_run]
            )
        return run

    def _execute(self, run: _Run, slot: int) -> None:
        rows: list[Any] = []
        for request, indices in run.parts:
            assert request.tokenized is not None
            rows.extend(request.tokenized.rows(indices))
        lengths = np.concatenate(
            [request.tokenized.lengths[indices] for request, indices in run.parts]  # type: ignore[union-attr]
        )
        started = time.monotonic()
        queue_wait_s = started - min(request.enqueued for request, _ in run.parts)
        with self._cond:
            self._running += 1
        try:
            groups = split_by_length(lengths)  # the engine's sub-runs, counted below
            outputs = self.model.run_rows(rows, slot, groups=groups)
        except Exception as exc:
            log.warning("model run of %d inputs failed: %s", len(rows), exc)
            for request, _ in run.parts:
                if request.live:
                    request.fail(exc)
            with self._planning:
                self._drop_finished()
            return
        finally:
            with self._cond:
                self._running -= 1
        # Reported before any caller gets its rows: a finished request is always counted.
        self._ran(
            started,
            callers=len(run.parts),
            texts=len(rows),
            tokens=int(lengths.sum()),
            padded=padded_tokens(lengths, groups),
            wait_s=queue_wait_s,
        )
        offset = 0
        for request, indices in run.parts:
            assert request.out is not None and request.tokenized is not None
            request.out[indices] = outputs[offset : offset + len(indices)]
            offset += len(indices)
            with self._delivery:
                request.remaining -= len(indices)
                complete = request.remaining == 0
            if complete and request.live:
                try:
                    result = request.finish(request.tokenized, request.out)
                except Exception as exc:
                    request.fail(exc)
                else:
                    request.resolve(result)

    def _ran(
        self, started: float, *, callers: int, texts: int, tokens: int, padded: int, wait_s: float
    ) -> None:
        """A model run that began at ``started`` has just ended: remember how many callers it
        served (the sign of concurrent clients) and report it to ``on_batch``."""
        run_s = time.monotonic() - started
        self._last_run_end = started + run_s
        self._last_run_callers = callers
        if self.on_batch is not None:
            try:
                self.on_batch(texts, tokens, padded, wait_s, run_s)
            except Exception:
                log.exception("the on_batch callback failed; batching goes on")

    def _drop_finished(self) -> None:
        self._pending = deque(r for r in self._pending if r.live)
