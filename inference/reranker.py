"""The engine half of cross-encoder reranking: export, config, scoring and the parity gate.

A cross-encoder reads a (query, document) pair as one sequence and its classification head
gives one logit, the relevance; sentence-transformers' ``CrossEncoder.predict`` turns it into a
score with the model's activation (sigmoid for one label). ``export_cross_encoder`` traces
``AutoModelForSequenceClassification`` into an ONNX graph with output ``logits``;
``read_rerank_config`` reads what scoring needs besides the weights; ``RerankModel`` scores
documents against a query on ONNX Runtime, batched like the embedding engine; and
``check_rerank_parity`` holds its scores against ``CrossEncoder.predict`` before the model serves.

Pairs are tokenised as ``CrossEncoder.predict`` tokenises them: sentence-transformers 6.2 calls
the tokenizer with ``truncation="longest_first"`` at the tokenizer's ``model_max_length``, so a
long document gives up tokens before a short query does, and two long texts are each cut to
half the room. ``RerankModel`` applies that rule itself (``longest_first``) to texts tokenised
one by one, rather than letting ``tokenizers`` truncate the pair: for a pair, ``tokenizers``
keeps every combination of the two texts' overflowing windows, which for two texts of 12,800
characters took a second and 700 MB per pair.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from inference.engine import (
    MAX_CHARS_PER_TOKEN,
    OnnxModel,
    _load_tokenizer,
    plan_batches,
    run_batches,
    split_by_length,
)
from inference.export import (
    CHECK_TEXTS,
    INPUT_NAMES,
    TOLERANCE,
    ExportError,
    Log,
    _torch,
    load_for_export,
    trace,
)
from inference.modelconfig import RerankConfig, read_rerank_config
from inference.parity import PROBE_TEXTS, reference_model

OUTPUT_NAME = "logits"
_GRAPH_INPUTS = set(INPUT_NAMES)


# -- export -------------------------------------------------------------------------------------

# Pairs that check an exported graph, cut as the reranker cuts them: one pair alone, then one
# padded batch with an empty document, a document far past max tokens and a query past it.
_CHECK_QUERY = CHECK_TEXTS[1]
_CHECK_BATCHES = (
    [(_CHECK_QUERY, CHECK_TEXTS[2])],
    [(_CHECK_QUERY, text) for text in CHECK_TEXTS] + [(CHECK_TEXTS[-1], CHECK_TEXTS[0])],
)


def export_cross_encoder(model_dir: Path, out_path: Path, log: Log | None = None) -> float:
    """Export the cross-encoder in ``model_dir`` to ``out_path`` (inputs among input_ids,
    attention_mask, token_type_ids; output ``logits``, batch x labels); return its largest
    difference from PyTorch on ``_CHECK_BATCHES`` (ExportError above ``TOLERANCE``).
    ModelConfigError, before anything is traced, for a model the reranker cannot serve."""
    torch = _torch()
    say = log or (lambda _line: None)
    limit = read_rerank_config(model_dir).max_tokens
    tokenizer, model, names = load_for_export(model_dir, "AutoModelForSequenceClassification")
    # Two pairs of different lengths, so that the trace sees padding and both segments.
    sample = _encode(tokenizer, _CHECK_BATCHES[1][:2], limit)
    dynamic = {n: {0: "batch", 1: "sequence"} for n in names} | {OUTPUT_NAME: {0: "batch"}}
    trace(model, OUTPUT_NAME, names, sample, out_path, dynamic, say)
    diff = _compare_logits(model, tokenizer, names, out_path, limit, torch)
    say(f"exported graph matches PyTorch within {diff:.1e}")
    if diff > TOLERANCE:
        raise ExportError(
            f"the exported graph's logits differ from PyTorch by {diff:.2e} (more than "
            f"{TOLERANCE:g}); the model cannot be served faithfully"
        )
    return diff


def _encode(tokenizer: Any, pairs: Sequence[tuple[str, str]], limit: int) -> Any:
    """PyTorch inputs for ``pairs``, padded and cut as CrossEncoder cuts them."""
    return tokenizer(
        [q for q, _ in pairs],
        [d for _, d in pairs],
        padding=True,
        truncation="longest_first",
        max_length=limit,
        return_tensors="pt",
    )


def _compare_logits(
    model: Any, tokenizer: Any, names: list[str], onnx_path: Path, limit: int, torch: Any
) -> float:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for pairs in _CHECK_BATCHES:
        enc = _encode(tokenizer, pairs, limit)
        with torch.no_grad():
            reference = model(**{n: enc[n] for n in names}).logits.numpy()
        (got,) = session.run([OUTPUT_NAME], {n: enc[n].numpy() for n in names})
        worst = max(worst, float(np.abs(got - reference).max()))
    return worst


# -- tokenising ---------------------------------------------------------------------------------


def longest_first(first: int, second: int, budget: int) -> tuple[int, int]:
    """The tokens ``tokenizers`` keeps of a pair of ``first`` and ``second`` tokens under its
    ``longest_first`` truncation to ``budget`` tokens (special tokens excluded).

    A shorter text that fits in half the budget is kept whole and the longer one gets the rest;
    otherwise each gets half, and of an odd budget the longer one (the second, on a tie) the
    extra token.
    """
    if first + second <= budget:
        return first, second
    short = min(first, second)
    if 2 * short <= budget:
        kept_short, kept_long = short, budget - short
    else:
        kept_short, kept_long = budget // 2, budget - budget // 2
    return (kept_long, kept_short) if first > second else (kept_short, kept_long)


@dataclass(frozen=True)
class _PairLayout:
    """Where the tokenizer's post-processor puts its special tokens around the two texts, and
    the type id of each position: ``prefix query middle document suffix``."""

    prefix: tuple[list[int], list[int]]  # token ids, type ids
    middle: tuple[list[int], list[int]]
    suffix: tuple[list[int], list[int]]
    query_type: int
    document_type: int

    @property
    def special_tokens(self) -> int:
        return len(self.prefix[0]) + len(self.middle[0]) + len(self.suffix[0])

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> _PairLayout:
        """Read the layout off the tokenizer's own encoding of a probe pair."""
        probe = tokenizer.encode("a", "b")
        spans = []
        for sequence in (0, 1):
            where = [i for i, s in enumerate(probe.sequence_ids) if s == sequence]
            types = {probe.type_ids[i] for i in where}
            if not where or where != list(range(where[0], where[-1] + 1)) or len(types) != 1:
                raise ValueError(
                    "the tokenizer's post-processor does not frame a pair as one span of each "
                    "text between special tokens; the reranker cannot tokenise pairs for it"
                )
            spans.append((where[0], where[-1] + 1, types.pop()))
        (a, b, query_type), (c, d, document_type) = spans
        ids, types = probe.ids, probe.type_ids
        return cls(
            prefix=(ids[:a], types[:a]),
            middle=(ids[b:c], types[b:c]),
            suffix=(ids[d:], types[d:]),
            query_type=query_type,
            document_type=document_type,
        )

    def join(self, query: Sequence[int], document: Sequence[int]) -> tuple[list[int], list[int]]:
        """Token ids and type ids of the pair."""
        ids = [*self.prefix[0], *query, *self.middle[0], *document, *self.suffix[0]]
        types = [
            *self.prefix[1],
            *[self.query_type] * len(query),
            *self.middle[1],
            *[self.document_type] * len(document),
            *self.suffix[1],
        ]
        return ids, types


@dataclass(frozen=True)
class PairTokens:
    """The (query, document) pairs of one request as the model reads them, in document order."""

    ids: list[list[int]]
    type_ids: list[list[int]]  # segment of each token, as BERT's token_type_ids
    lengths: np.ndarray  # int64, len(ids[i]) for each i
    truncated: np.ndarray  # bool, whether the query or document i was cut to fit max_tokens

    def rows(self, indices: Sequence[int] | np.ndarray) -> list[tuple[list[int], list[int]]]:
        """The (ids, type_ids) rows at ``indices`` (what ``RerankModel.run_rows`` takes)."""
        return [(self.ids[i], self.type_ids[i]) for i in indices]


@dataclass
class RerankResult:
    scores: np.ndarray  # float32, one per document in the documents' order
    token_counts: list[int]  # tokens of each pair as scored, special tokens included
    truncated: list[bool]  # per document: whether its pair was cut to max_tokens


def check_pair_inputs(query: object, documents: Sequence[object]) -> None:
    """TypeError naming the query or the first document that is not a string."""
    if not isinstance(query, str):
        raise TypeError(f"the query must be a string, got {type(query).__name__}")
    for index, document in enumerate(documents):
        if not isinstance(document, str):
            raise TypeError(f"document {index} must be a string, got {type(document).__name__}")


# -- scoring ------------------------------------------------------------------------------------


class RerankModel(OnnxModel):
    """One cross-encoder: its tokenizer, its config and its ONNX Runtime sessions.

    Sessions follow the settings' layout as ``EmbeddingModel``'s do: ``run(..., slot=i)`` on
    batch session ``i``, ``alone=True`` on the session of every core where there is one. Safe to
    call from several threads at once. An empty document is scored like any other text.
    """

    def __init__(
        self,
        onnx_path: str | Path,
        tokenizer_dir: str | Path,
        config: RerankConfig,
        settings: Mapping[str, Any],
    ) -> None:
        self.config = config
        backend, self._pad_id = _load_tokenizer(Path(tokenizer_dir))
        # A private copy, configured once and never changed after: it tokenises each text
        # whole; the pair is cut and framed here (see longest_first).
        self._tokenizer = Tokenizer.from_str(backend.to_str())
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._frame = _PairLayout.of(self._tokenizer)
        self._budget = config.max_tokens - self._frame.special_tokens
        if self._budget < 2:
            raise ValueError(
                f"max_tokens {config.max_tokens} leaves no room for a query and a document "
                f"besides the {self._frame.special_tokens} special tokens of a pair"
            )
        super().__init__(onnx_path, settings)
        self._check_inputs(_GRAPH_INPUTS, "a cross-encoder the reranker can feed")
        first = self._sessions.batch[0]
        outputs = {o.name: o for o in first.get_outputs()}
        output = outputs.get(OUTPUT_NAME)
        if output is None and len(outputs) == 1:
            (output,) = outputs.values()
        # A symbolic label axis (a str) is left to run's check of each result.
        labels = output.shape[1] if output is not None and len(output.shape) == 2 else None
        if labels != 1 and not isinstance(labels, str):
            raise ValueError(
                f"{self.onnx_path} has no (batch, 1) logits output to score with (outputs: "
                f"{', '.join(outputs)})"
            )
        self._output = output.name

    def tokenize_pairs(self, query: str, documents: Sequence[str]) -> PairTokens:
        """Token ids of ``(query, document)`` for each document, cut to ``max_tokens`` as
        CrossEncoder cuts them (``longest_first``) and framed by the model's special tokens."""
        check_pair_inputs(query, documents)
        texts = [query, *documents]
        # No token spans more than MAX_CHARS_PER_TOKEN characters, so what lies past this many
        # characters can never be kept: cut it before tokenising, as the engine does.
        cap = self.config.max_tokens * MAX_CHARS_PER_TOKEN
        cut = [len(text) > cap for text in texts]
        encodings = self._tokenizer.encode_batch(
            [text[:cap] for text in texts], add_special_tokens=False
        )
        pieces = [encoding.ids for encoding in encodings]
        whole: dict[int, int] = {}

        def length(index: int) -> int:
            # Only which of two halved texts is longer still depends on what was cut off: it
            # keeps the odd token of an odd budget. Rare (a query over half the budget beside a
            # text over the cap), so only then is the cut text counted whole.
            if index not in whole:
                whole[index] = len(
                    self._tokenizer.encode(texts[index], add_special_tokens=False).ids
                )
            return whole[index]

        budget = self._budget
        ids, type_ids, truncated = [], [], np.zeros(len(documents), dtype=bool)
        query_length = len(pieces[0])
        for row, document in enumerate(pieces[1:]):
            first, second = query_length, len(document)
            if (cut[0] or cut[row + 1]) and budget % 2 and 2 * min(first, second) > budget:
                first = length(0) if cut[0] else first
                second = length(row + 1) if cut[row + 1] else second
            keep_query, keep_document = longest_first(first, second, budget)
            truncated[row] = cut[0] or cut[row + 1] or first + second > budget
            pair_ids, pair_types = self._frame.join(
                pieces[0][:keep_query], document[:keep_document]
            )
            ids.append(pair_ids)
            type_ids.append(pair_types)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        return PairTokens(ids=ids, type_ids=type_ids, lengths=lengths, truncated=truncated)

    def run(
        self,
        ids: Sequence[Sequence[int]],
        type_ids: Sequence[Sequence[int]],
        slot: int = 0,
        *,
        alone: bool = False,
        groups: list[np.ndarray] | None = None,
    ) -> np.ndarray:
        """The logits (float32, one per row, in the given order) of one batch of pair rows as
        ``tokenize_pairs`` makes them, on batch session ``slot`` (modulo the sessions there
        are) or with ``alone`` on the lone-request session where there is one. Rows are run in
        ``groups`` of similar length (default ``split_by_length``), each padded to its
        longest."""
        count = len(ids)
        logits = np.empty(count, dtype=np.float32)
        if count == 0:
            return logits
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=count)
        session = self._session(slot, alone)  # for the whole run: see apply_settings
        for rows in split_by_length(lengths) if groups is None else groups:
            feed = self._feed([ids[i] for i in rows], [type_ids[i] for i in rows], lengths[rows])
            (out,) = session.run([self._output], feed)
            out = np.asarray(out, dtype=np.float32)
            if out.shape != (len(rows), 1):
                raise ValueError(
                    f"{self.onnx_path} returned {self._output} of shape {out.shape} for "
                    f"{len(rows)} pairs; a reranker gives one logit per pair"
                )
            logits[rows] = out[:, 0]
        return logits

    def run_rows(
        self,
        rows: Sequence[tuple[Sequence[int], Sequence[int]]],
        slot: int = 0,
        *,
        alone: bool = False,
        groups: list[np.ndarray] | None = None,
    ) -> np.ndarray:
        """``run`` over (ids, type_ids) rows, as the batcher gathers them."""
        return self.run(
            [row[0] for row in rows], [row[1] for row in rows], slot, alone=alone, groups=groups
        )

    def _feed(
        self,
        ids: Sequence[Sequence[int]],
        type_ids: Sequence[Sequence[int]],
        lengths: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """The graph's inputs for pair rows padded to the longest of them."""
        count, width = len(ids), int(lengths.max())
        mask = np.arange(width) < lengths[:, None]
        total = int(lengths.sum())
        feed: dict[str, np.ndarray] = {}
        for name, dtype in self._inputs.items():
            if name == "attention_mask":
                value = mask
            else:
                rows, pad = (ids, self._pad_id) if name == "input_ids" else (type_ids, 0)
                value = np.full((count, width), pad, dtype=np.int64)
                # Boolean-mask assignment fills row by row, left to right: the flat order.
                value[mask] = np.fromiter(itertools.chain.from_iterable(rows), np.int64, total)
            feed[name] = np.ascontiguousarray(value, dtype=dtype)
        return feed

    def activate(self, logits: np.ndarray) -> np.ndarray:
        """Scores from logits, as CrossEncoder.predict makes them with the model's activation."""
        if self.config.activation == "identity":
            return logits
        return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)

    def score(self, query: str, documents: Sequence[str], *, raw: bool = False) -> np.ndarray:
        """The relevance of each document to ``query`` (float32, in the documents' order):
        the model's activation of its logit (sigmoid in [0, 1]), or with ``raw`` the logit."""
        tokens = self.tokenize_pairs(query, documents)
        logits = np.empty(len(documents), dtype=np.float32)
        batches = plan_batches(
            tokens.lengths,
            int(self._settings["max_batch_size"]),
            int(self._settings["max_batch_tokens"]),
        )

        def run(rows: np.ndarray, slot: int, alone: bool) -> None:
            logits[rows] = self.run(
                [tokens.ids[i] for i in rows], [tokens.type_ids[i] for i in rows], slot, alone=alone
            )

        run_batches(batches, self.sessions, run)
        return logits if raw else self.activate(logits)


# -- parity gate --------------------------------------------------------------------------------

# One short question and one text past every model's max tokens (its pairs are cut on both
# sides), each against the other probe texts: several languages, an empty one, long ones.
_PARITY_QUERIES = (PROBE_TEXTS[0], PROBE_TEXTS[-2])
_PARITY_DOCUMENTS = PROBE_TEXTS[1:]


@dataclass(frozen=True)
class RerankParityResult:
    passed: bool
    max_abs_diff: float  # scores as served (activation applied) against CrossEncoder.predict
    max_logit_diff: float  # logits, where a saturated sigmoid would hide a difference
    same_order: bool  # each query's documents ranked alike (by logit)
    pairs: int
    worst_document: str
    seconds: float
    reference: str  # what ran the original

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        order = "same ranking" if self.same_order else "DIFFERENT ranking"
        return (
            f"rerank parity gate {verdict}: largest score difference {self.max_abs_diff:.1e}, "
            f"logit difference {self.max_logit_diff:.1e} (allowed {TOLERANCE:g}), {order}, over "
            f"{self.pairs} pairs against {self.reference} ({self.seconds:.1f} s)"
        )

    def to_manifest(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "max_abs_diff": self.max_abs_diff,
            "max_logit_diff": self.max_logit_diff,
            "same_order": self.same_order,
            "threshold": TOLERANCE,
            "pairs": self.pairs,
            "worst_document": self.worst_document[:80],
            "seconds": round(self.seconds, 2),
            "reference": self.reference,
        }


def check_rerank_parity(
    model_dir: Path, onnx_path: Path, config: RerankConfig, *, log: Log | None = None
) -> RerankParityResult:
    """Score the probe pairs with ``RerankModel`` on ``onnx_path`` and with CrossEncoder on the
    original in ``model_dir``: passed when every score and every logit agree within
    ``TOLERANCE`` and each query ranks its documents alike. ParityError if the original cannot
    be run."""
    say = log or (lambda _line: None)
    started = time.perf_counter()
    reference, label = reference_model(model_dir, "CrossEncoder")
    import torch  # the reference is loaded: PyTorch is there

    identity = torch.nn.Identity()
    model = RerankModel(onnx_path, model_dir, config, {"engine_sessions": 1, "spin_control": False})
    score_diffs, logit_diffs, same_order = [], [], True
    for query in _PARITY_QUERIES:
        pairs = [(query, document) for document in _PARITY_DOCUMENTS]
        logits = model.score(query, _PARITY_DOCUMENTS, raw=True)
        theirs = {
            kind: np.asarray(
                reference.predict(pairs, batch_size=8, show_progress_bar=False, **kwargs),
                dtype=np.float32,
            )
            for kind, kwargs in (("scores", {}), ("logits", {"activation_fn": identity}))
        }
        score_diffs.append(np.abs(model.activate(logits) - theirs["scores"]))
        logit_diffs.append(np.abs(logits - theirs["logits"]))
        ranking = np.argsort(-logits, kind="stable")
        same_order &= bool(np.array_equal(ranking, np.argsort(-theirs["logits"], kind="stable")))
    scores, raw = np.concatenate(score_diffs), np.concatenate(logit_diffs)
    worst = int(np.argmax(np.maximum(scores, raw)))
    max_abs_diff, max_logit_diff = float(scores.max()), float(raw.max())
    result = RerankParityResult(
        passed=max(max_abs_diff, max_logit_diff) <= TOLERANCE and same_order,
        max_abs_diff=max_abs_diff,
        max_logit_diff=max_logit_diff,
        same_order=same_order,
        pairs=len(scores),
        worst_document=_PARITY_DOCUMENTS[worst % len(_PARITY_DOCUMENTS)],
        seconds=time.perf_counter() - started,
        reference=label,
    )
    say(result.summary())
    return result


# -- int8 ---------------------------------------------------------------------------------------

# The int8 gate of a reranker (thresholds: catalog.INT8_THRESHOLDS["reranker"]) measures what
# it keeps of its fp32 rankings, a reranker's only output: the mean, over the probe queries, of
# the Spearman correlation of the documents' scores, and the share of each query's fp32 top 3
# that int8 also ranks in its top 3. Probe texts serve as queries (every n-th of the set, across
# its lengths and languages), each against the documents that follow it in the set.
_INT8_QUERIES = 24
_INT8_DOCUMENTS = 40
_TOP = 3


@dataclass(frozen=True)
class RerankInt8Report:
    passed: bool
    mean_spearman: float
    min_spearman: float
    top3_agreement: float
    max_abs_diff: float  # of the scores as served (the activation of the logits)
    queries: int
    pairs: int
    thresholds: Mapping[str, float]
    format: str
    cpu: Mapping[str, Any]

    def figures(self) -> str:
        return (
            f"rankings' Spearman correlation {self.mean_spearman:.4f} on average (lowest "
            f"{self.min_spearman:.4f}, needs {self.thresholds['mean_spearman']}), top-{_TOP} "
            f"agreement {self.top3_agreement:.3f} (needs {self.thresholds['top3_agreement']}), "
            f"largest score difference {self.max_abs_diff:.4f}, over {self.pairs} pairs"
        )

    def summary(self) -> str:
        outcome = "passed" if self.passed else "FAILED"
        return f"int8 rerank quality gate {outcome} ({self.format} weights): {self.figures()}"

    def to_manifest(self) -> dict[str, Any]:
        return {
            "kind": "reranker",
            "passed": self.passed,
            "mean_spearman": round(self.mean_spearman, 6),
            "min_spearman": round(self.min_spearman, 6),
            "top3_agreement": round(self.top3_agreement, 6),
            "max_abs_diff": round(self.max_abs_diff, 6),
            "queries": self.queries,
            "pairs": self.pairs,
            "thresholds": dict(self.thresholds),
            "format": self.format,
            "cpu": dict(self.cpu),
        }


def _ranks(values: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(values, kind="stable"), kind="stable").astype(np.float64)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / denominator if denominator else 1.0


def _probe_rankings(model: RerankModel, texts: Sequence[str]) -> list[np.ndarray]:
    """Each probe query's logits over its documents."""
    step = max(1, len(texts) // _INT8_QUERIES)
    out = []
    for start in range(0, step * _INT8_QUERIES, step):
        documents = [texts[(start + 1 + i) % len(texts)] for i in range(_INT8_DOCUMENTS)]
        out.append(model.score(texts[start], documents, raw=True))
    return out


def compare_rerank_int8(
    fp32: Sequence[np.ndarray], int8: Sequence[np.ndarray], activate: Any
) -> dict[str, float]:
    """The gate's figures for the probe queries' logits under fp32 and under int8."""
    spearman = [_spearman(a, b) for a, b in zip(fp32, int8, strict=True)]
    top = [
        len(set(np.argsort(-a, kind="stable")[:_TOP]) & set(np.argsort(-b, kind="stable")[:_TOP]))
        / _TOP
        for a, b in zip(fp32, int8, strict=True)
    ]
    diff = max(
        float(np.abs(activate(a) - activate(b)).max()) for a, b in zip(fp32, int8, strict=True)
    )
    return {
        "mean_spearman": float(np.mean(spearman)),
        "min_spearman": float(np.min(spearman)),
        "top3_agreement": float(np.mean(top)),
        "max_abs_diff": diff,
    }


def build_rerank_int8(
    fp32_path: Path,
    int8_path: Path,
    tokenizer_dir: Path,
    config: RerankConfig,
    thresholds: Mapping[str, float],
    fmt: str,
    cpu: Any,
    log: Log | None = None,
) -> RerankInt8Report:
    """Quantise ``fp32_path`` to ``int8_path`` (``quantize.quantize_int8``: dynamic, per-channel
    weights in ``fmt``) and hold its rankings of the probe queries' documents to fp32's."""
    from inference.quantize import probe_texts, quantize_int8

    say = log or (lambda _line: None)
    quantize_int8(fp32_path, int8_path, fmt)  # type: ignore[arg-type]
    texts = probe_texts()
    settings = {"engine_sessions": 1, "spin_control": False}
    reference = RerankModel(fp32_path, tokenizer_dir, config, settings)
    fp32 = _probe_rankings(reference, texts)
    int8 = _probe_rankings(RerankModel(int8_path, tokenizer_dir, config, settings), texts)
    figures = compare_rerank_int8(fp32, int8, reference.activate)
    report = RerankInt8Report(
        passed=figures["mean_spearman"] >= thresholds["mean_spearman"]
        and figures["top3_agreement"] >= thresholds["top3_agreement"],
        queries=len(fp32),
        pairs=sum(len(scores) for scores in fp32),
        thresholds=dict(thresholds),
        format=fmt,
        cpu=cpu.to_manifest(),
        **figures,
    )
    say(report.summary())
    return report
