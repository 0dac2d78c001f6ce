"""This machine's resources, and whether they meet a model's needs.

One probe for everything that asks: the catalog (can this machine host a model), a
deployment's preflight, and the console's overview and Server parameters blade
(``serverparams/machine.py``).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil

from inference.config import models_dir

_MB = 1024 * 1024


@dataclass(frozen=True)
class Resources:
    cores: int  # logical CPUs, the count the catalog's min_cores is compared with
    memory_mb: int  # total
    available_memory_mb: int  # free for new processes now, without swapping
    disk_total_gb: float
    disk_free_gb: float
    disk_path: Path  # the path whose disk was measured, as asked


@dataclass(frozen=True)
class ModelNeeds:
    memory_mb: int
    min_cores: int = 1
    disk_mb: int | None = None  # room its files take in the store; None: not declared


def probe(disk_path: Path | None = None) -> Resources:
    """Cores, memory, and the disk holding ``disk_path`` (default: the model store's), measured
    at its nearest existing parent."""
    path = Path(disk_path) if disk_path is not None else models_dir()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    disk = shutil.disk_usage(existing)
    memory = psutil.virtual_memory()
    return Resources(
        cores=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        memory_mb=memory.total // _MB,
        available_memory_mb=memory.available // _MB,
        disk_total_gb=disk.total / 1024**3,
        disk_free_gb=disk.free / 1024**3,
        disk_path=path,
    )


def unmet(model: str, needs: ModelNeeds, machine: Resources) -> list[str]:
    """Why ``machine`` cannot run ``model``, one sentence per need it misses, each saying what
    is needed and what the machine has (empty list: it can)."""
    problems = []
    if machine.memory_mb < needs.memory_mb:
        problems.append(
            f"{model} needs {needs.memory_mb} MB of memory; this machine has {machine.memory_mb} MB"
        )
    if machine.cores < needs.min_cores:
        problems.append(
            f"{model} needs at least {needs.min_cores} CPU cores; this machine has {machine.cores}"
        )
    free_mb = int(machine.disk_free_gb * 1024)
    if needs.disk_mb is not None and free_mb < needs.disk_mb:
        problems.append(
            f"{model} needs {needs.disk_mb} MB of disk space for its files; the disk holding "
            f"{machine.disk_path} has {free_mb} MB free"
        )
    return problems
