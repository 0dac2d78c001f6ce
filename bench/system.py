"""A system of a benchmark's own: a managed server on a free port, the inference sidecar, a
console database and Celery workers on a queue of their own, all under ``VAR_DIR/bench/NAME``.

    with bench_system("jobs") as system:  # this process's console now points at it
        system.start_worker()
        ...

A benchmark of worker machines gives each worker a sidecar of its own
(``start_worker_sidecar``, then ``start_worker(env={"WORKER_INFERENCE_URL": ...})``), both
pinned to some cores (``cores=``) to stand for a machine of that many cores.

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
from collections.abc import Iterator, Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from console.workers import CONCURRENCY, all_queues, worker_command
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
    # Sidecars of the workers' own (one per worker machine), beside the server's.
    worker_sidecars: list[SidecarProcess] = field(default_factory=list)
    started: int = 0  # workers started so far: each one's number, in its node name and log

    def start_worker(
        self,
        *,
        name: str = "",
        env: Mapping[str, str] | None = None,
        concurrency: int = CONCURRENCY,
        cores: Set[int] | None = None,
    ) -> ChildProcess:
        """One more ``celery worker`` process on the system's queues, started as production
        starts it (``worker_command``), returned once it is ready. Its node name is
        ``QUEUE-NAME@host`` (default name: its number); ``env`` is added to the workers'
        environment; with ``cores``, the worker and its pool run on those cores only."""
        number = self.started
        self.started += 1
        argv = worker_command(
            queues=all_queues(self.queue),
            concurrency=concurrency,
            hostname=f"{self.queue}-{name or number}@%h",
            quiet=True,
        )
        log_path = self.base / "log" / f"worker-{name or number}.log"
        env = {**self.env, **(env or {})}
        with pinned(cores):
            worker = ChildProcess(
                f"worker {name or number}", argv, log_path, env=env, cwd=PROJECT_ROOT
            )
        self.workers.append(worker)
        worker.wait_ready(lambda: " ready." in worker.output(), WORKER_START_S)
        return worker

    def start_worker_sidecar(
        self,
        name: str,
        *,
        cores: Set[int] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> SidecarProcess:
        """A sidecar for workers, in ``NAME/sidecar`` under the base directory, on ``cores``
        only, with ``settings`` (``PUT /settings``) applied before it loads a model."""
        with pinned(cores):
            sidecar = start_sidecar(self.base / name / "sidecar", log_dir=self.base / "log" / name)
        self.worker_sidecars.append(sidecar)
        if settings:
            sidecar.client.update_settings(settings)
        return sidecar

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user and system) used so far by each part of the system, by this
        process, and by the whole machine (the busy time of all its cores): the difference of
        two readings says where a phase's time went, and how much other processes took."""
        postmaster = self.server.status().pid
        parts = {
            "sidecar": _cpu([self.sidecar.process.pid]),
            # Backends that ended count in their postmaster's children times.
            "postgres": _cpu([postmaster] if postmaster else [], children=True),
            # A worker's tasks run in its pool's processes.
            "workers": _cpu([w.pid for w in self.workers if w.alive()], children=True),
            "worker_sidecars": _cpu(
                [s.process.pid for s in self.worker_sidecars if s.process.alive()]
            ),
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
        """Stop the workers, then their sidecars."""
        try:
            while self.workers:
                self.workers.pop().stop(grace=30)
        finally:
            while self.worker_sidecars:
                self.worker_sidecars.pop().stop()


@contextlib.contextmanager
def pinned(cores: Set[int] | None) -> Iterator[None]:
    """Run this thread on ``cores`` only (None: as it is), so that the processes it starts
    meanwhile, and every thread and child of theirs, inherit that affinity from birth."""
    if cores is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def affinity(pid: int) -> set[int]:
    """The cores any thread of process ``pid`` or of its descendants may run on."""
    process = psutil.Process(pid)
    cores: set[int] = set()
    for member in (process, *process.children(recursive=True)):
        with contextlib.suppress(psutil.Error, OSError):
            for thread in member.threads():
                cores |= os.sched_getaffinity(thread.id)
    return cores


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
