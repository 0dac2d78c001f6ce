"""The embedding engine: a fast tokenizer and one ONNX Runtime session per loaded model.

``EmbeddingModel.embed`` tokenises the whole request at once, sorts the inputs by token
length, cuts them into batches bounded by ``max_batch_size`` texts and ``max_batch_tokens``
padded tokens, pads each batch only to its longest member, runs the graph, pools (mean or CLS,
under the attention mask), applies the model's sentence-transformers Dense layers, if any,
L2-normalises when the model says so, and returns float32 rows in input order. The dynamic
batcher (``inference/batcher.py``) uses the two halves separately: ``tokenize`` for each request,
``run`` for each batch it assembles across requests.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from inference import chunking, sidecar_settings
from inference.chunking import Chunk
from inference.modelconfig import ModelConfig

if TYPE_CHECKING:
    from inference.store import StoredModel

# The most characters one token stands for: WordPiece reads a longer word as one [UNK]
# (max_input_chars_per_word), and other tokenizers' pieces are shorter still.
MAX_CHARS_PER_TOKEN = 100

# Settings that are baked into an ONNX Runtime session: changing one rebuilds the session.
SESSION_KEYS = (
    "engine_sessions",
    "lone_request_session",
    "intra_op_parallelism",
    "inter_op_parallelism",
    "spin_control",
    "memory_arena",
)

# Graph inputs the engine knows how to fill; an export that wants anything else is refused.
_KNOWN_INPUTS = {"input_ids", "attention_mask", "token_type_ids", "position_ids"}
# Per-token outputs, by the names Hugging Face and sentence-transformers exports give them.
_HIDDEN_OUTPUTS = ("last_hidden_state", "token_embeddings")
_ONNX_INT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


class InputTooLongError(ValueError):
    """With ``truncate=False``, an input has more tokens than the model accepts."""

    def __init__(self, index: int, tokens: int, max_tokens: int) -> None:
        super().__init__(
            f"input {index} has {tokens} tokens, more than this model's limit of {max_tokens} "
            "(special tokens included); shorten it, split it, or allow truncation"
        )
        self.index = index
        self.tokens = tokens
        self.max_tokens = max_tokens


@dataclass
class EmbedResult:
    vectors: np.ndarray  # float32, (n, dimensions), rows in input order
    token_counts: list[int]  # tokens per input after truncation, special tokens included
    truncated: list[bool]  # per input: whether it was cut to max_tokens


@dataclass(frozen=True)
class Tokenized:
    """Token ids of some inputs (special tokens added, truncated as asked), in input order."""

    ids: list[list[int]]
    lengths: np.ndarray  # int64, len(ids[i]) for each i
    truncated: np.ndarray  # bool, whether input i was cut to max_tokens

    def rows(self, indices: Sequence[int] | np.ndarray) -> list[list[int]]:
        """The id rows at ``indices`` (what ``EmbeddingModel.run_rows`` takes)."""
        return [self.ids[i] for i in indices]


# The fixed cost of one more model run, in padded tokens: the call itself plus the lower
# matrix-multiply efficiency of smaller runs. Measured on MiniLM-sized encoders on 2 cores.
RUN_OVERHEAD_TOKENS = 48


def split_by_length(lengths: np.ndarray, overhead: int = RUN_OVERHEAD_TOKENS) -> list[np.ndarray]:
    """Partition rows into runs of similar length that minimise the padded tokens computed.

    Rows sorted by length are cut into contiguous groups; a group costs ``overhead`` plus its
    size times its longest length. Dynamic programming over the cut points finds the cheapest
    partition (O(n^2) in numpy, for n up to ``max_batch_size``). Dynamic batching gathers
    requests of unrelated lengths into one run, which is where this pays: one long text no
    longer makes fifteen short ones pad to its length.
    """
    order = np.argsort(lengths, kind="stable")
    widths = lengths[order].astype(np.float64)
    n = len(order)
    if n < 2 or widths[0] == widths[-1]:
        return [order]
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    starts = np.arange(n)
    for end in range(1, n + 1):
        costs = best[:end] + overhead + (end - starts[:end]) * widths[end - 1]
        cut[end] = int(np.argmin(costs))
        best[end] = costs[cut[end]]
    groups = []
    end = n
    while end > 0:
        groups.append(order[cut[end] : end])
        end = int(cut[end])
    return groups[::-1]


def padded_tokens(lengths: np.ndarray, groups: list[np.ndarray]) -> int:
    """The tokens a run computes over rows of ``lengths`` split into ``groups`` (as
    ``split_by_length`` makes them): each group's rows padded to its longest."""
    return sum(len(rows) * int(lengths[rows].max()) for rows in groups if len(rows))


def batch_fits(count: int, width: int, max_batch_size: int, max_batch_tokens: int) -> bool:
    """Whether ``count`` texts padded to ``width`` tokens fit one model run.

    A single text always fits, however long: the token budget shapes batches, it never
    refuses an input.
    """
    return count <= 1 or (count <= max_batch_size and count * width <= max_batch_tokens)


def plan_batches(
    lengths: np.ndarray, max_batch_size: int, max_batch_tokens: int
) -> list[np.ndarray]:
    """Indices of texts of token ``lengths`` in batches for ``embed``: longest first, each
    batch's first member setting its width and the rest padding up to it, as many as fit the
    limits (at least one)."""
    order = np.argsort(-lengths, kind="stable")
    batches = []
    start = 0
    while start < len(order):
        width = int(lengths[order[start]])
        stop = min(len(order), start + max(1, min(max_batch_size, max_batch_tokens // width)))
        batches.append(order[start:stop])
        start = stop
    return batches


def session_options(settings: Mapping[str, Any], threads: int | None = None) -> ort.SessionOptions:
    """ONNX Runtime session options from the settings of ``inference/sidecar_settings.py``:
    ``threads`` intra-op threads (default: what the settings' layout gives a batch session)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or sidecar_settings.layout(settings).threads
    inter = int(settings["inter_op_parallelism"])
    options.inter_op_num_threads = inter
    # Threads across operators only help when independent operators may run at once.
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if inter > 1 else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    spin = "1" if settings["spin_control"] else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    arena = bool(settings["memory_arena"])
    options.enable_cpu_mem_arena = arena
    # Memory patterns are planned and kept per input shape; with shapes varying on every
    # request they only add up, so they follow the arena setting.
    options.enable_mem_pattern = arena
    options.log_severity_level = 3  # optimiser notices are not for the people running this
    return options


def run_batches(
    batches: list[np.ndarray], sessions: int, run: Callable[[np.ndarray, int, bool], None]
) -> None:
    """Call ``run(rows, slot, alone)`` for every batch: a lone batch on the lone-request
    session (``alone``), several on one thread per session, each taking the next batch, so
    that the sessions run at once."""
    if sessions == 1 or len(batches) == 1:
        for rows in batches:
            run(rows, 0, len(batches) == 1)
        return
    pending = iter(batches)
    lock = threading.Lock()

    def work(slot: int) -> None:
        while True:
            with lock:
                rows = next(pending, None)
            if rows is None:
                return
            run(rows, slot, False)

    with ThreadPoolExecutor(max_workers=sessions) as pool:
        for done in [pool.submit(work, slot) for slot in range(sessions)]:
            done.result()


def _full_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {**sidecar_settings.defaults(), **settings}


def _load_tokenizer(tokenizer_dir: Path) -> tuple[Tokenizer, int]:
    """The fast (Rust) tokenizer of a Hugging Face tokenizer directory, and its pad id."""
    # Imported here: transformers is slow to import and only model loading needs it.
    from transformers import AutoTokenizer

    if not tokenizer_dir.is_dir():
        raise FileNotFoundError(f"tokenizer directory {tokenizer_dir} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load the tokenizer in {tokenizer_dir}: {exc}") from exc
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not getattr(tokenizer, "is_fast", False) or backend is None:
        raise ValueError(
            f"the tokenizer in {tokenizer_dir} has no fast (Rust) implementation; the engine "
            "needs one: add the model's tokenizer.json to that directory"
        )
    pad_id = tokenizer.pad_token_id
    return backend, int(pad_id) if pad_id is not None else 0


def _gelu(x: np.ndarray) -> np.ndarray:
    # torch.nn.GELU's default, the exact form with erf; numpy has no erf, so through math's.
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return (0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))).astype(np.float32)


_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda x: x,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": lambda x: (1.0 / (1.0 + np.exp(-x))).astype(np.float32),
    "gelu": _gelu,
}

DenseWeights = tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]


def _load_dense(model_dir: Path, config: ModelConfig) -> list[DenseWeights]:
    """The weights of the config's Dense layers, from ``model_dir`` (the model's folder)."""
    from safetensors.numpy import load_file

    layers = []
    for layer in config.dense:
        path = model_dir / layer.weights
        if not path.is_file():
            raise FileNotFoundError(f"the Dense layer's weights {path} do not exist")
        tensors = load_file(str(path))
        weight = np.asarray(tensors["linear.weight"], dtype=np.float32)
        if weight.shape != (layer.out_features, layer.in_features):
            raise ValueError(
                f"{path} holds a {weight.shape} weight; its config says "
                f"{layer.out_features}x{layer.in_features}"
            )
        bias = tensors.get("linear.bias") if layer.bias else None
        bias = (
            np.asarray(bias, dtype=np.float32)
            if bias is not None
            else np.zeros(layer.out_features, np.float32)
        )
        layers.append((weight, bias, _ACTIVATIONS[layer.activation]))
    return layers


@dataclass(frozen=True)
class _Sessions:
    """A model's sessions, swapped as one when the settings change."""

    batch: tuple[ort.InferenceSession, ...]  # one per batcher worker
    lone: ort.InferenceSession | None  # every core's threads, for a lone request


class OnnxModel:
    """A graph's ONNX Runtime sessions, laid out by the settings (``sidecar_settings.layout``),
    for the embedding engine and the reranker alike.

    Each session has its own intra-op thread pool: ``_session(slot)`` is batch session
    ``slot``, so that several threads (the batcher's workers) run batches at once without
    sharing a thread pool. With several, one more session of all their threads runs lone
    requests (``_session(slot, alone=True)``), which find the others idle. All sessions are
    built from the same file and give the same results.
    """

    def __init__(self, onnx_path: str | Path, settings: Mapping[str, Any]) -> None:
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise FileNotFoundError(f"ONNX model file {self.onnx_path} does not exist")
        self._settings = _full_settings(settings)
        self._settings_lock = threading.Lock()
        self._sessions = self._new_sessions(self._settings)
        first = self._sessions.batch[0]
        self._inputs = {i.name: _ONNX_INT_TYPES.get(i.type) for i in first.get_inputs()}

    def _check_inputs(self, known: set[str], what: str) -> None:
        """Refuse a graph that wants inputs other than ``known`` or not as integer tensors."""
        unknown = sorted(set(self._inputs) - known)
        bad_types = sorted(name for name, dtype in self._inputs.items() if dtype is None)
        if unknown or bad_types or "input_ids" not in self._inputs:
            raise ValueError(
                f"{self.onnx_path} is not {what}: it needs inputs "
                f"{', '.join(sorted(self._inputs))} (known: {', '.join(sorted(known))}, "
                "as int32 or int64 tensors)"
            )

    def _new_sessions(self, settings: Mapping[str, Any]) -> _Sessions:
        chosen = sidecar_settings.layout(settings)

        def new(threads: int) -> ort.InferenceSession:
            return ort.InferenceSession(
                str(self.onnx_path),
                sess_options=session_options(settings, threads),
                providers=["CPUExecutionProvider"],
            )

        return _Sessions(
            batch=tuple(new(chosen.threads) for _ in range(chosen.sessions)),
            lone=new(chosen.lone_threads) if chosen.lone_threads else None,
        )

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self._settings)

    @property
    def sessions(self) -> int:
        """How many ONNX Runtime sessions the model has now (``run``'s slots)."""
        return len(self._sessions.batch)

    @property
    def layout(self) -> sidecar_settings.Layout:
        return sidecar_settings.layout(self._settings)

    def session_options(self, slot: int = 0, *, alone: bool = False) -> ort.SessionOptions:
        """The options of a session now in use (thread counts and so on), as ORT reports them:
        batch session ``slot``, or with ``alone`` the one that runs lone requests."""
        return self._session(slot, alone).get_session_options()

    def _session(self, slot: int, alone: bool) -> ort.InferenceSession:
        sessions = self._sessions  # one reference: see apply_settings
        if alone and sessions.lone is not None:
            return sessions.lone
        return sessions.batch[slot % len(sessions.batch)]

    def apply_settings(self, settings: Mapping[str, Any]) -> None:
        """Take new settings; rebuild the sessions only when a session option changed.

        The new sessions are built first and then swapped in. A run that started on an old
        session keeps its own reference to it, so it finishes there undisturbed; ONNX Runtime
        frees the old session once the last such run lets go of it.
        """
        with self._settings_lock:
            merged = {**self._settings, **settings}
            if any(merged[key] != self._settings[key] for key in SESSION_KEYS):
                self._sessions = self._new_sessions(merged)
            self._settings = merged


class EmbeddingModel(OnnxModel):
    """One embedding model: its tokenizer, its config and its ONNX Runtime sessions
    (``OnnxModel``): ``run(ids, slot=i)`` runs on batch session ``i``, ``run(ids,
    alone=True)`` on the lone-request session where there is one.
    Safe to call from several threads at once. An empty string is embedded like any other
    input: as the model's special tokens alone (for BERT, ``[CLS] [SEP]``); refusing empty
    inputs is the caller's decision.
    """

    def __init__(
        self,
        onnx_path: str | Path,
        tokenizer_dir: str | Path,
        config: ModelConfig,
        settings: Mapping[str, Any],
    ) -> None:
        self.config = config
        backend, self._pad_id = _load_tokenizer(Path(tokenizer_dir))
        # Two private copies, configured once and never changed after, so that concurrent
        # calls never see each other's truncation: one cuts at max_tokens, one counts everything.
        serialized = backend.to_str()
        self._truncating = Tokenizer.from_str(serialized)
        self._counting = Tokenizer.from_str(serialized)
        for tok in (self._truncating, self._counting):
            tok.no_padding()
            tok.no_truncation()
        self._truncating.enable_truncation(max_length=config.max_tokens)
        super().__init__(onnx_path, settings)
        self._check_inputs(_KNOWN_INPUTS, "a text encoder the engine can feed")
        self._output = self._hidden_output_name()
        self._dense = _load_dense(Path(tokenizer_dir), config)

    @classmethod
    def from_stored(
        cls, stored: StoredModel, settings: Mapping[str, Any], precision: str = "fp32"
    ) -> EmbeddingModel:
        """Load a model from the model store (``precision`` "fp32" or "int8")."""
        return cls(stored.onnx_path(precision), stored.tokenizer_dir, stored.config, settings)

    def _hidden_output_name(self) -> str:
        outputs = self._sessions.batch[0].get_outputs()
        names = [o.name for o in outputs]
        for name in _HIDDEN_OUTPUTS:
            if name in names:
                return name
        for output in outputs:
            if len(output.shape) == 3:
                return output.name
        raise ValueError(
            f"{self.onnx_path} has no per-token output to pool (outputs: {', '.join(names)}); "
            "export the model with its last_hidden_state"
        )

    # -- tokenising ---------------------------------------------------------------------------

    def _prefixed(self, texts: Sequence[str], input_type: str | None) -> list[str]:
        prefix = self.config.prefix(input_type)
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"input {index} must be a string, got {type(text).__name__}")
        return [prefix + text for text in texts] if prefix else list(texts)

    def tokenize(
        self, texts: Sequence[str], *, input_type: str | None = None, truncate: bool = True
    ) -> Tokenized:
        """Token ids with special tokens, cut to ``max_tokens`` and marked as cut (or refused if
        ``truncate`` is false and an input is longer: ``InputTooLongError`` names the first
        such input)."""
        prefixed = self._prefixed(texts, input_type)
        precut = np.zeros(len(prefixed), dtype=bool)
        if truncate:
            # No token spans more than MAX_CHARS_PER_TOKEN characters, so the rest of a longer
            # text cannot reach the model: cut it before tokenizing, or one huge text would
            # hold the tokenizer (and every request queued behind it) for minutes.
            cap = self.config.max_tokens * MAX_CHARS_PER_TOKEN
            for index, text in enumerate(prefixed):
                if len(text) > cap:
                    prefixed[index] = text[:cap]
                    precut[index] = True
        tokenizer = self._truncating if truncate else self._counting
        encodings = tokenizer.encode_batch(prefixed)
        ids = [encoding.ids for encoding in encodings]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        limit = self.config.max_tokens
        truncated = np.zeros(len(ids), dtype=bool)
        if truncate:
            # Only an input cut to exactly the limit may have been cut; the tokenizer keeps
            # what it cut off as overflow, so no second pass is needed to tell.
            for index in np.flatnonzero(lengths == limit):
                truncated[index] = bool(encodings[index].overflowing)
            truncated |= precut
        elif len(ids):
            too_long = np.flatnonzero(lengths > limit)
            if too_long.size:
                index = int(too_long[0])
                raise InputTooLongError(index, int(lengths[index]), limit)
        return Tokenized(ids=ids, lengths=lengths, truncated=truncated)

    def count_tokens(self, texts: Sequence[str], *, input_type: str | None = None) -> list[int]:
        """Tokens per input *before* truncation (special tokens and prefix included): compare
        with ``config.max_tokens`` to tell which inputs would be cut."""
        prefixed = self._prefixed(texts, input_type)
        return [len(encoding.ids) for encoding in self._counting.encode_batch(prefixed)]

    def chunk(
        self, texts: Sequence[str], size: int, overlap: int, *, input_type: str | None = None
    ) -> list[list[Chunk]]:
        """Each text split into chunks of at most ``size`` tokens (``overlap`` shared), which
        embed whole with the input type's prefix: ``ChunkingError`` for sizes that cannot."""
        self._prefixed(texts, None)  # the type check of every input
        prefix = self.config.prefix(input_type)
        limit = chunking.budget(self._counting, self.config.max_tokens, prefix)
        chunking.check_sizes(size, overlap, limit)
        return chunking.split(self._counting, texts, size, overlap)

    # -- running ------------------------------------------------------------------------------

    def run(
        self,
        ids: Sequence[Sequence[int]],
        slot: int = 0,
        *,
        alone: bool = False,
        groups: list[np.ndarray] | None = None,
    ) -> np.ndarray:
        """Embed one batch of token id rows (as ``tokenize`` makes them) on session ``slot``
        (modulo the sessions there are: the layout may have shrunk meanwhile), or with
        ``alone`` on the lone-request session where there is one (the caller makes sure the
        batch sessions are idle: both use the same cores).

        Rows of very different lengths are split into sub-runs of similar length where the
        padding saved outweighs the cost of another run (``groups``, default
        ``split_by_length`` of the rows' lengths, which a caller that counts the padded
        tokens has already worked out); each sub-run is padded to its longest row. Returns
        float32 ``(len(ids), dimensions)`` in the given order.
        """
        count = len(ids)
        if count == 0:
            return np.empty((0, self.config.dimensions), dtype=np.float32)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=count)
        if groups is None:
            groups = split_by_length(lengths)
        session = self._session(slot, alone)  # for the whole run: see apply_settings
        if len(groups) == 1:
            return self._run_padded(session, ids, lengths)
        vectors = np.empty((count, self.config.dimensions), dtype=np.float32)
        for rows in groups:
            vectors[rows] = self._run_padded(session, [ids[i] for i in rows], lengths[rows])
        return vectors

    run_rows = run  # the batcher's name for it: a row is a list of token ids

    def _run_padded(
        self, session: ort.InferenceSession, ids: Sequence[Sequence[int]], lengths: np.ndarray
    ) -> np.ndarray:
        """One model run over ``ids`` padded to the longest of them."""
        feed, mask = self.feed(ids, lengths)
        (hidden,) = session.run([self._output], feed)
        hidden = np.asarray(hidden, dtype=np.float32)
        if hidden.ndim != 3 or hidden.shape[2] != self.config.hidden_dimensions:
            raise ValueError(
                f"{self.onnx_path} returned {self._output} of shape {hidden.shape}; the model "
                f"config says {self.config.hidden_dimensions} dimensions"
            )

        if self.config.pooling == "cls":
            pooled = np.array(hidden[:, 0, :])
        else:
            weights = mask.astype(np.float32)[:, None, :]  # (n, 1, width)
            pooled = np.matmul(weights, hidden)[:, 0, :]
            pooled /= lengths[:, None].astype(np.float32)
        for weight, bias, activation in self._dense:
            pooled = activation(np.matmul(pooled, weight.T) + bias)
        if self.config.normalize:
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            pooled /= np.maximum(norms, 1e-12)  # the epsilon sentence-transformers uses
        return pooled

    def feed(
        self, ids: Sequence[Sequence[int]], lengths: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The graph's inputs for ``ids`` padded to the longest of them, and the padding mask."""
        count = len(ids)
        width = int(lengths.max())
        mask = np.arange(width) < lengths[:, None]
        input_ids = np.full((count, width), self._pad_id, dtype=np.int64)
        # Boolean-mask assignment fills row by row, left to right: the order of the flat ids.
        input_ids[mask] = np.fromiter(
            itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum())
        )
        feed: dict[str, np.ndarray] = {}
        for name, dtype in self._inputs.items():
            if name == "input_ids":
                value = input_ids
            elif name == "attention_mask":
                value = mask
            elif name == "token_type_ids":
                value = np.zeros((count, width), dtype=np.int64)
            else:  # position_ids
                value = np.broadcast_to(np.arange(width), (count, width))
            feed[name] = np.ascontiguousarray(value, dtype=dtype)
        return feed, mask

    def embed(
        self, texts: Sequence[str], *, input_type: str | None = None, truncate: bool = True
    ) -> EmbedResult:
        """Embed ``texts``; rows of the result follow the order of ``texts``.

        ``input_type`` "query" or "passage" prepends the model's prefix for it, None prepends
        nothing. Inputs longer than ``max_tokens`` are cut to it, or refused with
        ``InputTooLongError`` when ``truncate`` is false. An empty string is embedded as the
        special tokens alone.
        """
        tokenized = self.tokenize(texts, input_type=input_type, truncate=truncate)
        lengths = tokenized.lengths
        vectors = np.empty((len(texts), self.config.dimensions), dtype=np.float32)
        settings = self._settings
        batches = plan_batches(
            lengths, int(settings["max_batch_size"]), int(settings["max_batch_tokens"])
        )

        def run(rows: np.ndarray, slot: int, alone: bool) -> None:
            vectors[rows] = self.run([tokenized.ids[i] for i in rows], slot, alone=alone)

        run_batches(batches, self.sessions, run)
        return EmbedResult(
            vectors=vectors, token_counts=lengths.tolist(), truncated=tokenized.truncated.tolist()
        )
