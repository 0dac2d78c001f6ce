"""A system of a benchmark's own: a managed server on a free port, the inference sidecar, a
console database and Celery workers on a queue of their own, all under ``VAR_DIR/bench/NAME``.

    with bench_system("jobs") as system:  # this process's console now points at it
        system.start_worker()
        ...

Entering points this process's environment (and so the console's settings, set up here) at the
system and migrates its console database; leaving stops the workers, the server and the sidecar,
whatever happened inside.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from console.workers import all_queues, worker_command
from inference.config import PROJECT_ROOT, var_dir
from inference.process import ChildProcess, SidecarProcess, free_port, start_sidecar
from serverparams.server import ManagedServer

WORKER_START_S = 60.0


def machine() -> dict[str, Any]:
    """What a benchmark ran on: the CPU's model, its cores, memory and Python."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
    }


@dataclass
class System:
    base: Path
    sidecar: SidecarProcess
    server: ManagedServer
    queue: str
    env: dict[str, str]  # the workers' environment
    workers: list[ChildProcess] = field(default_factory=list)

    def start_worker(self) -> ChildProcess:
        """One more ``celery worker`` process on the system's queues, started as production
        starts it (``worker_command``), returned once it is ready."""
        number = len(self.workers)
        argv = worker_command(
            queues=all_queues(self.queue), hostname=f"{self.queue}-{number}@%h", quiet=True
        )
        log_path = self.base / "log" / f"worker-{number}.log"
        worker = ChildProcess(f"worker {number}", argv, log_path, env=self.env, cwd=PROJECT_ROOT)
        self.workers.append(worker)
        worker.wait_ready(lambda: " ready." in worker.output(), WORKER_START_S)
        return worker

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user and system) used so far by each part of the system, by this
        process, and by the whole machine (the busy time of all its cores): the difference of
        two readings says where a phase's time went, and how much other processes took."""
        postmaster = self.server.status().pid
        parts = {
            "sidecar": _cpu([self.sidecar.process.pid]),
            # Backends that ended count in their postmaster's children times.
            "postgres": _cpu([postmaster] if postmaster else [], children=True),
            "workers": _cpu([w.pid for w in self.workers if w.alive()]),
            "benchmark": _cpu([os.getpid()]),
        }
        times = psutil.cpu_times()
        parts["machine"] = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        return parts

    def engine_counters(self) -> dict[str, float]:
        """The sidecar's counters of model runs so far (all models): runs, texts, real and
        padded tokens, and the seconds spent running the model."""
        from prometheus_client.parser import text_string_to_metric_families

        names = {
            "inference_batch_run_seconds_count": "runs",
            "inference_batch_run_seconds_sum": "run_s",
            "inference_batch_size_sum": "texts",
            "inference_batch_tokens_sum": "tokens",
            "inference_batch_padded_tokens_sum": "padded_tokens",
        }
        totals = dict.fromkeys(names.values(), 0.0)
        response = httpx.get(f"{self.sidecar.url}/metrics", timeout=30)
        response.raise_for_status()
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name in names:
                    totals[names[sample.name]] += sample.value
        return totals

    def stop_workers(self) -> None:
        while self.workers:
            self.workers.pop().stop(grace=30)


def _cpu(pids: list[int], *, children: bool = False) -> float:
    """CPU seconds of the processes ``pids``; with ``children``, of all their descendants too,
    those that ended included."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            times = process.cpu_times()
            total += times.user + times.system
            if children:
                total += times.children_user + times.children_system
                for child in process.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        child_times = child.cpu_times()
                        total += child_times.user + child_times.system
    return total


@contextlib.contextmanager
def bench_system(name: str, **extra_env: str) -> Iterator[System]:
    """Start the system in a fresh ``VAR_DIR/bench/NAME`` (``extra_env`` added to the
    environment of this process and of the workers), and stop it afterwards."""
    base = var_dir() / "bench" / name
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    base.chmod(0o755)  # the managed server's own system user must reach its data
    sidecar = start_sidecar(base / "sidecar", log_dir=base / "log")
    server = ManagedServer(var_dir=base, port=free_port(), service_url=sidecar.url)
    env = {
        **os.environ,
        "VAR_DIR": str(base),
        "MANAGED_PG_PORT": str(server.port),
        "INFERENCE_URL": sidecar.url,
        "DATABASE_URL": f"sqlite:///{base / 'console.sqlite3'}",
        "CELERY_QUEUE": f"bench-{uuid.uuid4().hex[:8]}",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        **extra_env,
    }
    for unset in ("MANAGED_DATABASE_URL", "INFERENCE_CATALOG"):
        env.pop(unset, None)
        os.environ.pop(unset, None)
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    system = System(base, sidecar, server, env["CELERY_QUEUE"], env)
    try:
        import django
        from django.core.management import call_command

        django.setup()
        server.start()
        call_command("migrate", verbosity=0)
        yield system
    finally:
        try:
            system.stop_workers()
        finally:
            try:
                server.stop()
            finally:
                sidecar.stop()
