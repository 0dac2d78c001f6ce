"""The engine on the cores a machine has: scaling, layouts, and what limits long texts.

In one run, on all-MiniLM-L6-v2:v1 (deployed fp32 and int8 from its package when the store
lacks it, as ``bench/embeddings.py`` does), with texts of ``bench/corpus.py``'s profiles (short
queries, ~128-token passages, documents past the model's limit):

* **machine**: the CPU, its int8-relevant flags and the int8 format they choose; the int8
  variant's format, gate figures and products kept in fp32, from its manifest; PyTorch's fp32
  SGEMM peak at each thread count (the ceiling of both systems' dense layers).
* **scaling**: per profile and thread count (``--thread-counts``, by default 1, 2, 4, ... up
  to the physical cores), the engine with the layout it chooses for that many cores against
  sentence-transformers on the same thread budget, with the int8 variant; scaling efficiency
  against the first thread count (``bench/embeddings.py``'s ``measure_profiles``).
  Every section embeds the same texts, enough for two batches per session when every core
  runs a session of its own, so that no layout waits on a last, lone batch.
* **layouts**: on all cores, every layout of sessions x threads that fills them, and the
  automatic one: texts/s per profile and a lone query's p50 (``embed`` of one text runs on the
  lone-request session where the layout has one).
* **long texts**: documents on all cores, one session of every core and the automatic layout,
  each with the defaults (ONNX Runtime's memory arena off, a token budget of 1024), with the
  arena on, and with budgets of 4096 and 16384; and where the time goes per operator type at
  2 threads and at all cores (ONNX Runtime's profiler, one session), with each type's
  speed-up.

Usage: ``.venv/bin/python bench/cores.py [--thread-counts 1,2,4] [--only
scaling|layouts|long]``. Prints tables and writes ``VAR_DIR/bench/cores.json``
(after each section, so that a run cut short keeps what it measured).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.embeddings import (
    _print_profiles,
    ensure_model,
    layout_for_cores,
    load_reference,
    measure_profiles,
    profile_corpora,
    timed,
    torch_sgemm_peak_gflops,
)
from inference import sidecar_settings as settings_schema
from inference.config import models_dir, var_dir
from inference.cpu import read_cpu
from inference.engine import EmbeddingModel, plan_batches, session_options
from inference.store import ModelStore

LONE_QUERY = "how do I keep the embeddings of a table in sync with its rows"
LONE_CALLS = 200
BUDGETS = (1024, 4096, 16384)


def powers_of_two(cores: int) -> list[int]:
    """1, 2, 4, ... up to ``cores``, and ``cores`` itself where it is not a power of two."""
    counts = [1]
    while counts[-1] * 2 <= cores:
        counts.append(counts[-1] * 2)
    if counts[-1] != cores:
        counts.append(cores)
    return counts


def layouts_filling(cores: int) -> list[tuple[int, int]]:
    """Every (sessions, threads) whose product is ``cores``, fewest sessions first."""
    return [(cores // t, t) for t in range(cores, 0, -1) if cores % t == 0]


def with_layout(sessions: int, threads: int, **changes) -> dict:
    """The default settings with an explicit layout (0, 0: the automatic one)."""
    return {
        **settings_schema.defaults(),
        "engine_sessions": sessions,
        "intra_op_parallelism": threads,
        **changes,
    }


def lone_p50_ms(engine: EmbeddingModel, calls: int = LONE_CALLS) -> float:
    """Median wall time of embedding one short query, ``calls`` times after a warm-up."""
    for _ in range(10):
        engine.embed([LONE_QUERY])
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        engine.embed([LONE_QUERY])
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def _save(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


def machine_section(stored, thread_counts: list[int]) -> dict:
    cpu = read_cpu()
    int8 = stored.manifest.get("quality", {}).get("int8", {})
    peaks = {n: round(torch_sgemm_peak_gflops(n), 1) for n in thread_counts}
    section = {
        "cpu": cpu.to_manifest(),
        "physical_cores": settings_schema.physical_cores(),
        "usable_cpus": settings_schema.usable_cpus(),
        "native_int8_format": cpu.int8_format,
        "onnxruntime": ort.__version__,
        "int8_quality": int8,
        "preparation": stored.manifest.get("preparation", {}),
        "torch_sgemm_peak_gflops": peaks,
    }
    print(f"machine: {cpu.describe()}")
    print(
        f"  {section['physical_cores']} physical cores, {section['usable_cpus']} usable CPUs, "
        f"ONNX Runtime {ort.__version__}"
    )
    print(f"  int8 variant and its gate: {json.dumps(int8)}")
    base = peaks[thread_counts[0]]
    for n, peak in peaks.items():
        scale = peak / base / (n / thread_counts[0])
        print(f"  SGEMM peak at {n:>2} threads: {peak:8.1f} GFLOP/s ({scale:.0%} of linear)")
    return section


def layout_corpora(cores: int) -> dict[str, list[str]]:
    """Texts of each profile enough for two batches per session of the layout with the most
    sessions (one per core) at the default budget: 64 short queries, 7 passages or 4
    documents a batch."""
    return profile_corpora({"short": 128 * cores, "passage": 14 * cores, "document": 8 * cores})


def bulk_texts_per_s(engine: EmbeddingModel, texts: list[str]) -> float:
    return round(len(texts) / timed(lambda: engine.embed(texts), repeats=2), 1)


def measure_layouts(stored, cores: int, corpora: dict[str, list[str]]) -> list[dict]:
    """Each layout filling ``cores``: texts/s per profile and lone p50; and the automatic
    one's lone p50 (its batches run as the explicit layout of the same shape)."""
    rows = []
    for sessions, threads in [*layouts_filling(cores), (0, 0)]:
        settings = layout_for_cores(with_layout(sessions, threads), cores)
        chosen = settings_schema.layout(settings, cores=cores)
        engine = EmbeddingModel.from_stored(stored, settings)
        row = {
            "layout": chosen.describe(),
            "automatic": sessions == 0,
            "sessions": chosen.sessions,
            "threads": chosen.threads,
        }
        line = f"  {row['layout']:56}"
        if not row["automatic"]:
            for name, texts in corpora.items():
                row[f"{name}_texts_per_s"] = bulk_texts_per_s(engine, texts)
                line += f" {name} {row[f'{name}_texts_per_s']:>7.0f}"
        row["lone_p50_ms"] = round(lone_p50_ms(engine), 2)
        rows.append(row)
        print(f"{line}  lone {row['lone_p50_ms']:.2f} ms", flush=True)
    return rows


def op_profile(stored, texts: list[str], threads: int, max_batch_tokens: int) -> dict:
    """Kernel time per operator type of one session of ``threads`` threads over ``texts`` in
    the engine's batches, from ONNX Runtime's profiler (the first, warm-up pass left out)."""
    settings = with_layout(1, threads, max_batch_tokens=max_batch_tokens)
    engine = EmbeddingModel.from_stored(stored, settings)
    tokenized = engine.tokenize(texts)
    batches = plan_batches(tokenized.lengths, int(settings["max_batch_size"]), max_batch_tokens)
    feeds = [
        engine.feed([tokenized.ids[i] for i in rows], tokenized.lengths[rows])[0]
        for rows in batches
    ]
    with tempfile.TemporaryDirectory() as tmp:
        options = session_options(settings, threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(
            str(stored.onnx_path("fp32")), options, providers=["CPUExecutionProvider"]
        )
        for feed in feeds:  # the warm-up pass
            session.run(None, feed)
        warm_runs = len(feeds)
        start = time.perf_counter()
        for feed in feeds:
            session.run(None, feed)
        wall = time.perf_counter() - start
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
        key=lambda e: e["ts"],
    )
    measured_from = runs[warm_runs]["ts"] if len(runs) > warm_runs else 0
    by_type: dict[str, float] = defaultdict(float)
    for event in events:
        if (
            event.get("cat") == "Node"
            and event.get("name", "").endswith("_kernel_time")
            and event["ts"] >= measured_from
        ):
            by_type[event.get("args", {}).get("op_name", "?")] += event["dur"] / 1e6
    return {"wall_s": wall, "by_type_s": dict(by_type)}


def measure_long(stored, cores: int, documents: list[str]) -> dict:
    """Documents on all cores: for one session of every core and the automatic layout, the
    defaults, the memory arena on and larger token budgets; and the operator profile at 2
    threads against all cores."""
    variants = []
    for sessions, threads in ((1, cores), (0, 0)):
        for arena in (False, True):
            for budget in BUDGETS:
                if arena and budget != BUDGETS[0]:
                    continue  # the arena is measured at the default budget
                settings = layout_for_cores(
                    with_layout(sessions, threads, memory_arena=arena, max_batch_tokens=budget),
                    cores,
                )
                engine = EmbeddingModel.from_stored(stored, settings)
                row = {
                    "layout": settings_schema.layout(settings, cores=cores).describe(),
                    "memory_arena": arena,
                    "max_batch_tokens": budget,
                    "texts_per_s": bulk_texts_per_s(engine, documents),
                }
                variants.append(row)
                print(
                    f"  {row['layout']:56} arena {'on ' if arena else 'off'} "
                    f"budget {budget:>5}: {row['texts_per_s']:7.1f} texts/s",
                    flush=True,
                )
    low = min(2, cores)
    profiles = {n: op_profile(stored, documents, n, BUDGETS[0]) for n in sorted({low, cores})}
    total_low = sum(profiles[low]["by_type_s"].values())
    ops = []
    for op, low_s in sorted(profiles[low]["by_type_s"].items(), key=lambda kv: -kv[1]):
        high_s = profiles[cores]["by_type_s"].get(op, 0.0)
        ops.append(
            {
                "op": op,
                f"share_at_{low}": round(low_s / total_low, 3),
                f"share_at_{cores}": round(
                    high_s / max(sum(profiles[cores]["by_type_s"].values()), 1e-9), 3
                ),
                "speedup": round(low_s / high_s, 2) if high_s else None,
            }
        )
    ideal = cores / low
    print(
        f"\n  documents, one session: {low} threads {profiles[low]['wall_s']:.2f} s, "
        f"{cores} threads {profiles[cores]['wall_s']:.2f} s "
        f"(speed-up {profiles[low]['wall_s'] / profiles[cores]['wall_s']:.2f}x of {ideal:.0f}x)"
    )
    print(f"  {'operator':28} {f'share x{low}':>9} {f'share x{cores}':>10} {'speed-up':>9}")
    for row in ops:
        if row[f"share_at_{low}"] < 0.005 and row[f"share_at_{cores}"] < 0.005:
            continue
        speedup = f"{row['speedup']:.2f}x" if row["speedup"] else "-"
        print(
            f"  {row['op']:28} {row[f'share_at_{low}']:>9.1%} "
            f"{row[f'share_at_{cores}']:>10.1%} {speedup:>9}"
        )
    return {
        "variants": variants,
        "profile_wall_s": {str(n): round(p["wall_s"], 3) for n, p in profiles.items()},
        "operators": ops,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--thread-counts",
        help="comma-separated thread counts for the scaling section (default: 1, 2, 4, ... "
        "up to the physical cores)",
    )
    parser.add_argument("--only", choices=["scaling", "layouts", "long"])
    args = parser.parse_args()

    cores = settings_schema.physical_cores()
    thread_counts = (
        sorted({int(n) for n in args.thread_counts.split(",")})
        if args.thread_counts
        else powers_of_two(cores)
    )
    store = ModelStore(models_dir())
    stored = ensure_model(store)
    out = var_dir() / "bench" / "cores.json"
    report: dict = {"model": stored.manifest.get("uri"), "cores": cores}
    report["machine"] = machine_section(stored, thread_counts)
    _save(report, out)

    corpora = layout_corpora(cores)
    sizes = ", ".join(f"{len(texts)} {name}" for name, texts in corpora.items())
    if args.only in (None, "scaling"):
        print(f"\nscaling, thread counts {thread_counts} ({sizes}; best of 3 after a warm-up):")
        report["scaling"] = measure_profiles(stored, load_reference(), thread_counts, corpora)
        _print_profiles(report["scaling"])
        _save(report, out)

    if args.only in (None, "layouts"):
        print(f"\nlayouts on {cores} cores ({sizes}; texts/s, best of 2 after a warm-up):")
        report["layouts"] = measure_layouts(stored, cores, corpora)
        _save(report, out)

    if args.only in (None, "long"):
        print(f"\nlong texts on {cores} cores ({len(corpora['document'])} documents):")
        report["long"] = measure_long(stored, cores, corpora["document"])
        _save(report, out)
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
