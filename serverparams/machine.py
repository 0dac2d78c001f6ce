"""This machine's resources, and whether they meet an extension's needs.

The probe and the needs check are inference/resources.py's; this module names them for the
console and adds which extension needs which model.
"""

from __future__ import annotations

from pathlib import Path

from inference import catalog
from inference.resources import Resources, probe
from serverparams import policy

__all__ = ["Resources", "resources", "unmet_needs"]


def resources(disk_path: Path) -> Resources:
    """Cores, memory and the disk holding ``disk_path`` (the nearest existing parent)."""
    return probe(disk_path)


def unmet_needs(extension: str) -> str:
    """Why this machine cannot use ``extension``, or an empty string when it can."""
    model_uri = policy.EXTENSION_MODEL_NEEDS.get(extension.lower())
    if model_uri is None:
        return ""
    if model_uri == policy.DEFAULT_MODEL:
        model_uri = catalog.default_uri()
    entry = catalog.catalog().find(model_uri)
    if entry is None:
        return f"the model catalog does not list {model_uri}, which this extension serves"
    return "; ".join(entry.resource_problems())
