"""The steps of a deployment, declared as data: their order, titles and what each does."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepInfo:
    name: str
    title: str
    does: str


ENABLE_STEPS: tuple[StepInfo, ...] = (
    StepInfo(
        "preflight",
        "Preflight",
        "memory and cores against the model's needs; the sidecar and the managed server reachable",
    ),
    StepInfo("fetch", "Fetch", "the model's files from its source"),
    StepInfo("verify", "Verify", "every file's hash against what its source published"),
    StepInfo(
        "prepare",
        "Prepare",
        "ONNX export where the source has none; int8 with its quality gate when asked",
    ),
    StepInfo(
        "install", "Install", "into the model store, atomically, with a manifest of sha256 hashes"
    ),
    StepInfo("register", "Register", "with the inference sidecar, which loads it"),
    StepInfo(
        "warmup",
        "Warm up",
        "a probe embedding (dimensions and norm checked), or for a reranker a probe ranking",
    ),
    StepInfo("allowlist", "Allowlist", "azure_local_ai (and vector) added to azure.extensions"),
    StepInfo(
        "ready",
        "Ready",
        "CREATE EXTENSION azure_local_ai works; where an older version is installed, it is "
        "updated (ALTER EXTENSION ... UPDATE)",
    ),
)
DISABLE_STEPS: tuple[StepInfo, ...] = (
    StepInfo(
        "unload",
        "Unload",
        "the model leaves the sidecar's memory; its files stay in the store for a quick redeploy",
    ),
)
STEPS_BY_ACTION = {"enable": ENABLE_STEPS, "disable": DISABLE_STEPS}
TITLES = {step.name: step.title for steps in STEPS_BY_ACTION.values() for step in steps}
# The steps inference.provision.deploy runs, in one call, under the store's lock.
PROVISION_STEPS = ("fetch", "verify", "prepare", "install")
