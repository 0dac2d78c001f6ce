"""This machine's resources, and whether they meet an extension's needs."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil

from inference import catalog
from serverparams import policy


@dataclass(frozen=True)
class Resources:
    cores: int
    memory_mb: int
    disk_total_gb: float
    disk_free_gb: float
    disk_path: Path


def resources(disk_path: Path) -> Resources:
    """Cores, memory and the disk holding ``disk_path`` (the nearest existing parent)."""
    probe = disk_path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    disk = shutil.disk_usage(probe)
    return Resources(
        cores=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        memory_mb=psutil.virtual_memory().total // (1024 * 1024),
        disk_total_gb=disk.total / 1024**3,
        disk_free_gb=disk.free / 1024**3,
        disk_path=disk_path,
    )


def unmet_needs(extension: str) -> str:
    """Why this machine cannot use ``extension``, or an empty string when it can."""
    model_uri = policy.EXTENSION_MODEL_NEEDS.get(extension.lower())
    if model_uri is None:
        return ""
    entry = catalog.catalog().find(model_uri)
    if entry is None:
        return f"the model catalog does not list {model_uri}, which this extension serves"
    return "; ".join(entry.resource_problems())
