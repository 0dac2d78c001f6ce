"""Reranking: one query against 20, 50 and 200 documents of about 100 tokens, through SQL
``rank()`` and the sidecar's HTTP route, and the engine's pairs per second side by side with
sentence-transformers' ``CrossEncoder.predict`` and plain ONNX Runtime, in one run.

The model is a random-weight BERT cross-encoder shaped like cross-encoder/ms-marco-MiniLM-L-6-v2
(6 layers, hidden 384, 12 heads, intermediate 1536, 512 positions, one label), generated once
(``torch.manual_seed``) into ``VAR_DIR/bench/rerank/minilm-l6-random`` and reused by reruns. It
is added and deployed through the product's pipeline (inspection, export, the rerank parity
gate) into ``VAR_DIR/bench/rerank/store``, then served by a sidecar of its own to a managed
PostgreSQL of its own (ports chosen free).

Measured, for each document count:

* ``sql_p50_ms``: ``SELECT * FROM azure_local_ai.rank(query, documents, model => uri)``, end to
  end (libpq, the module, the binary route over the sidecar's Unix socket, dynamic batching,
  ONNX Runtime), one call at a time;
* ``http_p50_ms``: ``POST /v1/rerank`` (Cohere's shape, JSON) over TCP, one call at a time;
* pairs per second, all with the same thread budget (every core of the machine):
  ``engine`` (``RerankModel.score`` in-process, the sidecar's default layout),
  ``cross_encoder`` (``CrossEncoder.predict``, batch size 32, PyTorch on every core), and
  ``plain_ort`` (one ONNX Runtime session of every core on the same graph, transformers'
  tokenizer padding each batch of 32 pairs to its longest, as a straightforward port would);
  ``vs_cross_encoder`` is engine / cross_encoder;
* ``engine_int8_pairs_per_s`` (and ``int8_vs_cross_encoder``): the engine on the int8 variant
  that ``build_rerank_int8`` makes in this CPU's format, with its rankings gate's figures
  (``int8_gate``) against the catalog's thresholds. A random model's int8 figures say nothing of
  a trained one's; the speed is the same.

Usage: ``.venv/bin/python bench/rerank.py [--runs N] [--rebuild]``.
Prints a table and writes ``VAR_DIR/bench/rerank.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.system import machine
from inference import catalog as catalog_module
from inference import sidecar_settings
from inference.catalog import INT8_THRESHOLDS, Catalog, entry_from_raw
from inference.config import var_dir
from inference.cpu import read_cpu
from inference.intake import inspect_source
from inference.process import free_port, start_sidecar
from inference.provision import deploy
from inference.reranker import RerankModel, build_rerank_int8
from inference.store import ModelStore, StoredModel
from serverparams.server import ManagedServer
from tests.fixtures.stmodels import CORPUS, make_cross_encoder

URI = "ms-marco-minilm-l6-random:v1"
SHAPE = {"hidden": 384, "layers": 6, "heads": 12, "intermediate": 1536, "max_tokens": 512}
COUNTS = (20, 50, 200)
QUERY = "how does the database find the nearest vectors for a question"
DOCUMENT_TOKENS = 100
BATCH = 32


def build_model(root: Path, rebuild: bool) -> tuple[Path, StoredModel]:
    """The generated cross-encoder and its deployment (both reused unless ``rebuild``)."""
    folder = root / "minilm-l6-random"
    store = ModelStore(root / "store")
    if rebuild:
        shutil.rmtree(root, ignore_errors=True)
    if not (folder / "config.json").is_file():
        print("generating the random MiniLM-L-6-shaped cross-encoder ...", flush=True)
        make_cross_encoder(folder, "bert", seed=0, **SHAPE)
    stored = store.get(URI)
    if stored is None:
        inspection = inspect_source(str(folder))
        if not inspection.ok:
            raise SystemExit(f"the generated model was refused: {inspection.refusals}")
        shipped = catalog_module.catalog()
        entry = entry_from_raw(inspection.entry(URI))
        print("deploying it (export and rerank parity gate) ...", flush=True)
        started = time.perf_counter()
        stored = deploy(
            URI, store=store, catalog=Catalog([*shipped.entries, entry], shipped.default)
        ).stored
        print(f"deployed in {time.perf_counter() - started:.1f} s", flush=True)
    return folder, stored


def documents(count: int, tokenize: Callable[[str], int], seed: int) -> list[str]:
    """``count`` documents of about ``DOCUMENT_TOKENS`` tokens each (of the model's tokenizer)."""
    words = " ".join(CORPUS).split()
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        text = ""
        while tokenize(text) < DOCUMENT_TOKENS:
            text += " ".join(rng.choice(words) for _ in range(8)) + " "
        out.append(text.strip())
    return out


def p50_ms(call: Callable[[], Any], runs: int) -> float:
    call()  # warm-up
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def pairs_per_s(call: Callable[[], Any], pairs: int, runs: int) -> float:
    return pairs / (p50_ms(call, runs) / 1000)


def plain_ort(stored: StoredModel, folder: Path, cores: int) -> Callable[[list[str]], np.ndarray]:
    import onnxruntime as ort
    from transformers import AutoTokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = cores
    session = ort.InferenceSession(
        str(stored.onnx_path()), sess_options=options, providers=["CPUExecutionProvider"]
    )
    names = {i.name for i in session.get_inputs()}
    tokenizer = AutoTokenizer.from_pretrained(str(folder))

    def score(docs: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(docs), BATCH):
            batch = tokenizer(
                [QUERY] * len(docs[start : start + BATCH]),
                docs[start : start + BATCH],
                padding=True,
                truncation="longest_first",
                max_length=SHAPE["max_tokens"],
                return_tensors="np",
            )
            feed = {k: v.astype(np.int64) for k, v in batch.items() if k in names}
            out.append(session.run(None, feed)[0][:, 0])
        return 1 / (1 + np.exp(-np.concatenate(out)))

    return score


SQL = "SELECT * FROM azure_local_ai.rank(%s, %s, model => %s)"


def measure(
    conn: Any,
    http: httpx.Client,
    engine: RerankModel,
    reference: Any,
    ort_score: Callable[[list[str]], np.ndarray],
    docs: list[str],
    runs: int,
    int8: RerankModel,
) -> dict[str, Any]:
    """One document count's figures (see the module docstring)."""
    count = len(docs)
    pairs = [(QUERY, d) for d in docs]
    ranked = conn.execute(SQL, [QUERY, docs, URI]).fetchall()
    theirs = np.asarray(reference.predict(pairs, batch_size=BATCH), np.float32)
    ours = np.array([r[2] for r in sorted(ranked, key=lambda r: int(r[0]))])
    row: dict[str, Any] = {
        "documents": count,
        "max_abs_diff_vs_cross_encoder": float(np.abs(ours - theirs).max()),
        "sql_p50_ms": p50_ms(lambda: conn.execute(SQL, [QUERY, docs, URI]).fetchall(), runs),
        "http_p50_ms": p50_ms(
            lambda: http.post(
                "/v1/rerank", json={"model": URI, "query": QUERY, "documents": docs}
            ).raise_for_status(),
            runs,
        ),
        "engine_pairs_per_s": pairs_per_s(lambda: engine.score(QUERY, docs), count, runs),
        "cross_encoder_pairs_per_s": pairs_per_s(
            lambda: reference.predict(pairs, batch_size=BATCH, show_progress_bar=False),
            count,
            runs,
        ),
        "plain_ort_pairs_per_s": pairs_per_s(lambda: ort_score(docs), count, runs),
        "engine_int8_pairs_per_s": pairs_per_s(lambda: int8.score(QUERY, docs), count, runs),
    }
    row["int8_vs_cross_encoder"] = row["engine_int8_pairs_per_s"] / row["cross_encoder_pairs_per_s"]
    row["vs_cross_encoder"] = row["engine_pairs_per_s"] / row["cross_encoder_pairs_per_s"]
    row["vs_plain_ort"] = row["engine_pairs_per_s"] / row["plain_ort_pairs_per_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="timed calls per measure")
    parser.add_argument("--rebuild", action="store_true", help="generate and deploy afresh")
    args = parser.parse_args()

    import torch
    from sentence_transformers import CrossEncoder

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    root = var_dir() / "bench" / "rerank"
    folder, stored = build_model(root, args.rebuild)
    engine = RerankModel(
        stored.onnx_path(), stored.tokenizer_dir, stored.config, sidecar_settings.defaults()
    )
    reference = CrossEncoder(str(folder), device="cpu", local_files_only=True)
    ort_score = plain_ort(stored, folder, cores)
    cpu = read_cpu()
    int8_path = root / "int8" / "model_int8.onnx"
    print(f"quantising to int8 ({cpu.int8_format}) and running its rankings gate ...", flush=True)
    gate = build_rerank_int8(
        stored.onnx_path(),
        int8_path,
        stored.tokenizer_dir,
        stored.config,
        INT8_THRESHOLDS["reranker"],
        cpu.int8_format,
        cpu,
    )
    int8 = RerankModel(int8_path, stored.tokenizer_dir, stored.config, sidecar_settings.defaults())

    def tokens(text: str) -> int:
        return len(engine.tokenize_pairs("", [text]).ids[0]) - 3

    run_dir = root / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    server = ManagedServer(var_dir=run_dir, port=free_port())
    socket_path = server.socket_dir / "inference.sock"
    sidecar = start_sidecar(run_dir / "sidecar", unix_socket=socket_path)
    server.service_url = f"unix:{socket_path}"
    rows: list[dict[str, Any]] = []
    try:
        sidecar.client.register(URI, str(stored.path))
        server.start()
        with server.connect() as conn:
            conn.execute("ALTER SYSTEM SET azure.extensions = 'vector,azure_local_ai'")
            conn.execute("SELECT pg_reload_conf()")
        with server.connect() as conn, httpx.Client(base_url=sidecar.url, timeout=300) as http:
            conn.execute("CREATE EXTENSION IF NOT EXISTS azure_local_ai")
            for count in COUNTS:
                docs = documents(count, tokens, seed=count)
                mean_tokens = statistics.mean(tokens(d) for d in docs)
                runs = args.runs if count <= 50 else max(3, args.runs // 2)
                row = measure(conn, http, engine, reference, ort_score, docs, runs, int8)
                row["mean_document_tokens"] = round(mean_tokens, 1)
                rows.append(row)
                print(f"{count} documents measured", flush=True)
    finally:
        sidecar.stop()
        server.stop()

    results = {
        "model": URI,
        "shape": SHAPE,
        "machine": machine(),
        "threads": cores,
        "layout": sidecar_settings.layout(sidecar_settings.defaults()).describe(),
        "rows": rows,
        "int8_gate": gate.to_manifest(),
    }
    out = var_dir() / "bench" / "rerank.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")

    print(
        f"\n{URI} ({SHAPE['layers']} layers, hidden {SHAPE['hidden']}) on "
        f"{results['machine']['cpu']}, {cores} threads; engine layout {results['layout']}"
    )
    header = (
        f"{'docs':>5} {'tokens':>6} {'SQL p50':>9} {'HTTP p50':>9} {'engine':>8} "
        f"{'CrossEnc':>9} {'plain ORT':>9} {'vs CE':>6} {'vs ORT':>6} {'max diff':>9} "
        f"{'int8':>8} {'vs CE':>6}"
    )
    print(header)
    print(f"{'':>5} {'':>6} {'ms':>9} {'ms':>9} {'pairs/s':>8} {'pairs/s':>9} {'pairs/s':>9}")
    for r in rows:
        print(
            f"{r['documents']:>5} {r['mean_document_tokens']:>6.0f} {r['sql_p50_ms']:>9.1f} "
            f"{r['http_p50_ms']:>9.1f} {r['engine_pairs_per_s']:>8.0f} "
            f"{r['cross_encoder_pairs_per_s']:>9.0f} {r['plain_ort_pairs_per_s']:>9.0f} "
            f"{r['vs_cross_encoder']:>5.2f}x {r['vs_plain_ort']:>5.2f}x "
            f"{r['max_abs_diff_vs_cross_encoder']:>9.1e} {r['engine_int8_pairs_per_s']:>8.0f} "
            f"{r['int8_vs_cross_encoder']:>5.2f}x"
        )
    print(gate.summary())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
