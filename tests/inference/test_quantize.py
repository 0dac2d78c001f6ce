"""The int8 variant: its format chosen for the deploying CPU, a gate that measures the same
twice, and a second gate where it is served on a CPU of another format."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from inference import quantize
from inference.catalog import Catalog, load_catalog
from inference.cpu import CpuFeatures, int8_format, parse_cpuinfo, read_cpu
from inference.modelconfig import read_model_config
from inference.provision import DeployResult, deploy
from inference.service import ModelLoadError, Sidecar
from inference.store import ModelStore, StoredModel
from tests.fixtures.realmodel import TINY_URI, write_catalog

VNNI = CpuFeatures(
    "Intel(R) Xeon(R) Platinum 8480+",
    frozenset({"avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"}),
)
NO_VNNI = CpuFeatures("AMD EPYC 7B12", frozenset({"sse4_2", "avx2", "fma"}))
THRESHOLDS = {"mean_cos": 0.99, "top10_agreement": 0.9}


# -- the format for the CPU -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "fmt"),
    [
        ({"sse4_2", "avx2", "fma"}, "u8"),
        ({"avx2", "avx512f", "avx512bw"}, "u8"),
        ({"avx2", "avx512f", "avx512_vnni"}, "s8"),
        ({"avx2", "avx_vnni"}, "s8"),
        ({"avx512f", "amx_tile", "amx_int8", "amx_bf16"}, "s8"),
        ({"fp", "asimd", "asimddp"}, "s8"),
        ({"fp", "asimd", "i8mm"}, "s8"),
        ({"fp", "asimd"}, "u8"),
        (set(), "u8"),
    ],
)
def test_signed_weights_only_where_the_cpu_has_an_int8_dot_product(
    flags: set[str], fmt: str
) -> None:
    assert int8_format(flags) == fmt


X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse4_2 avx2 avx512f avx512_vnni amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: another name that is not read
flags\t\t: fpu
"""

ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes crc32 atomics asimddp i8mm
CPU implementer\t: 0x41
CPU part\t: 0xd0c
"""


def test_cpuinfo_of_x86_and_arm_machines_gives_model_flags_and_format() -> None:
    x86 = parse_cpuinfo(X86_CPUINFO)
    assert x86.model == "Intel(R) Xeon(R) Platinum 8480+"
    assert x86.int8_format == "s8"
    assert x86.to_manifest() == {
        "model": "Intel(R) Xeon(R) Platinum 8480+",
        "flags": ["avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8", "amx_bf16"],
    }
    arm = parse_cpuinfo(ARM_CPUINFO)
    assert arm.model == "implementer 0x41 part 0xd0c"
    assert arm.reported_flags() == ["asimddp", "i8mm"] and arm.int8_format == "s8"


def test_a_machine_without_cpuinfo_has_no_flags_and_gets_unsigned_weights(tmp_path: Path) -> None:
    cpu = read_cpu(tmp_path / "no-cpuinfo")
    assert cpu.flags == frozenset() and cpu.int8_format == "u8" and cpu.model


def _weight_types(graph: Path) -> set[int]:
    """Element types of the weights the int8 matrix products multiply by."""
    model = onnx.load(str(graph))
    initializers = {t.name: t.data_type for t in model.graph.initializer}
    weights = [n.input[1] for n in model.graph.node if n.op_type == "MatMulInteger"]
    assert weights
    return {initializers[name] for name in weights}


@pytest.mark.parametrize(
    ("fmt", "dtype"), [("s8", onnx.TensorProto.INT8), ("u8", onnx.TensorProto.UINT8)]
)
def test_quantisation_writes_the_weight_format_asked(
    tmp_path: Path, tiny_model_dir: Path, fmt: str, dtype: int
) -> None:
    int8 = tmp_path / "model_int8.onnx"
    quantize.quantize_int8(tiny_model_dir / "onnx" / "model.onnx", int8, fmt)  # type: ignore[arg-type]
    assert _weight_types(int8) == {dtype}


# -- the probe set and the gate ---------------------------------------------------------------

SCRIPTS = {
    "Han": "CJK UNIFIED",
    "Hiragana": "HIRAGANA",
    "Katakana": "KATAKANA",
    "Hangul": "HANGUL",
    "Cyrillic": "CYRILLIC",
    "Arabic": "ARABIC",
    "Hebrew": "HEBREW",
    "Greek": "GREEK",
    "Devanagari": "DEVANAGARI",
    "Thai": "THAI",
}


def _scripts(text: str) -> set[str]:
    names = {unicodedata.name(c, "") for c in text if c.isalpha()}
    return {
        script for script, prefix in SCRIPTS.items() if any(n.startswith(prefix) for n in names)
    }


def test_probe_set_is_large_multilingual_and_from_queries_to_long_passages() -> None:
    probes = quantize.probe_set()
    texts = probes.texts
    assert len(texts) >= 400 and len(set(texts)) == len(texts)
    found = set().union(*(_scripts(t) for t in texts))
    assert found == set(SCRIPTS)
    # German, French and Spanish by their letters (the texts are whole sentences in each).
    for letters in ("ßäöü", "çèêà", "ñ¿¡ó"):
        assert sum(any(c in t for c in letters) for t in texts) >= 12, letters
    words = np.array([len(t.split()) for t in texts])
    assert (words <= 8).sum() >= 100  # short queries
    assert (words >= 100).sum() >= 30  # passages past 128 tokens
    assert (words >= 270).sum() >= 5  # past the 256-token limit of all-MiniLM-L6-v2
    assert (words >= 380).sum() >= 2  # near the 512 tokens of multilingual-e5-small
    assert probes.version >= 2 and re.fullmatch(r"[0-9a-f]{64}", probes.sha256)


def test_gate_gives_the_same_verdict_and_figures_on_two_runs(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    fp32 = tiny_model_dir / "onnx" / "model.onnx"
    int8 = tmp_path / "model_int8.onnx"
    quantize.quantize_int8(fp32, int8, "u8")
    config = read_model_config(tiny_model_dir)
    runs = [
        quantize.quality_gate(fp32, int8, tiny_model_dir, config, THRESHOLDS, "u8", NO_VNNI)
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    figures = runs[0].to_manifest()
    assert figures == json.loads(json.dumps(runs[1].to_manifest()))
    assert figures["probes"] == len(quantize.probe_texts())
    assert figures["probe_set"] == quantize.probe_set().to_manifest()
    assert figures["format"] == "u8"
    assert figures["cpu"] == {"model": "AMD EPYC 7B12", "flags": ["avx2"]}
    low, high = figures["top10_agreement_ci95"]
    assert 0 < figures["top10_agreement_stderr"] < 0.05
    assert low < figures["top10_agreement"] < high
    assert figures["min_cos"] <= figures["mean_cos"] <= 1.0


def _matmul_ops(graph: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(graph)).graph.node if "MatMul" in n.op_type]


def test_a_variant_clear_of_its_gate_keeps_every_product_in_int8(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    fp32, int8 = tiny_model_dir / "onnx" / "model.onnx", tmp_path / "model_int8.onnx"
    config = read_model_config(tiny_model_dir)
    report = quantize.build_int8(fp32, int8, tiny_model_dir, config, THRESHOLDS, "u8", NO_VNNI)
    assert report.clear and report.kept_fp32 == () and report.matmuls == 1
    assert "MatMulInteger" in _matmul_ops(int8)
    # The embedding tables stay fp32: a lookup gains nothing from int8.
    assert not any(n.op_type == "DequantizeLinear" for n in onnx.load(str(int8)).graph.node)
    assert "kept in fp32" not in report.summary()


def test_a_variant_not_clear_of_its_gate_keeps_its_most_outlying_products_in_fp32(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    fp32, int8 = tiny_model_dir / "onnx" / "model.onnx", tmp_path / "model_int8.onnx"
    config = read_model_config(tiny_model_dir)
    ranking = quantize.outlier_ranking(fp32, tiny_model_dir, config)
    assert ranking == ["output_projection"]  # the tiny model's one product by a weight
    # Out of reach: a mean cosine above 1. The loop stops at its cap, and says so.
    lines: list[str] = []
    strict = {"mean_cos": 1.01, "top10_agreement": 0.9}
    report = quantize.build_int8(
        fp32, int8, tiny_model_dir, config, strict, "u8", NO_VNNI, log=lines.append
    )
    assert not report.passed and report.kept_fp32 == ("output_projection",)
    assert len(lines) == 1 and "keeping output_projection in fp32, 1 of at most 1" in lines[0]
    assert _matmul_ops(int8) == ["MatMul"] * 3  # nothing left in int8
    assert "1 of 1 matrix products kept in fp32" in report.summary()
    manifest = json.loads(json.dumps(report.to_manifest()))
    assert manifest["kept_fp32"] == ["output_projection"] and manifest["matmuls"] == 1
    assert quantize.QualityReport.from_manifest(manifest) == report
    # Within its own margin of error: passed, but its interval reaches below the threshold.
    near = quantize.verdict(
        quantize.Agreement(0.995, 0.95, 0.905, 0.004, 400), THRESHOLDS, "s8", VNNI,
        quantize.probe_set(),
    )  # fmt: skip
    assert near.passed and not near.clear


def test_the_verdict_needs_both_means_and_its_interval_is_mean_plus_minus_two_errors() -> None:
    figures = quantize.Agreement(
        mean_cos=0.995, min_cos=0.95, top10_agreement=0.91, top10_agreement_stderr=0.01, probes=400
    )
    probes = quantize.probe_set()
    report = quantize.verdict(figures, THRESHOLDS, "s8", VNNI, probes)
    assert report.passed and report.top10_agreement_ci95 == (0.8904, 0.9296)
    assert "95% interval 0.890-0.930" in report.summary()
    low_cos = quantize.Agreement(0.989, 0.9, 0.99, 0.0, 400)
    assert not quantize.verdict(low_cos, THRESHOLDS, "s8", VNNI, probes).passed


# -- deployed for one CPU, served on another --------------------------------------------------


@pytest.fixture
def tiny_catalog(tmp_path: Path) -> Catalog:
    return load_catalog(write_catalog(tmp_path / "catalog.json"))


def _deploy_int8(
    store: ModelStore, source: Path, catalog: Catalog, cpu: CpuFeatures
) -> DeployResult:
    return deploy(
        TINY_URI, source=str(source), precision="int8", store=store, catalog=catalog, cpu=cpu
    )


def test_deployment_records_the_format_and_cpu_it_quantised_for(
    tmp_path: Path, tiny_model_dir: Path, tiny_catalog: Catalog
) -> None:
    store = ModelStore(tmp_path / "models")
    stored = _deploy_int8(store, tiny_model_dir, tiny_catalog, VNNI).stored
    quality = stored.manifest["quality"]["int8"]
    assert quality["passed"] is True and quality["format"] == "s8"
    assert quality["cpu"] == {
        "model": VNNI.model,
        "flags": ["avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"],
    }
    assert quality["probe_set"] == quantize.probe_set().to_manifest()
    assert quality["probes"] == len(quantize.probe_texts())
    assert _weight_types(stored.onnx_path("int8")) == {onnx.TensorProto.INT8}


def test_asking_int8_on_a_cpu_of_another_format_rebuilds_it_for_that_cpu(
    tmp_path: Path, tiny_model_dir: Path, tiny_catalog: Catalog
) -> None:
    store = ModelStore(tmp_path / "models")
    _deploy_int8(store, tiny_model_dir, tiny_catalog, VNNI)
    again = _deploy_int8(store, tiny_model_dir, tiny_catalog, NO_VNNI)
    assert again.changed and again.skipped == ["fetch"]
    assert again.stored.manifest["quality"]["int8"]["format"] == "u8"
    assert _weight_types(again.stored.onnx_path("int8")) == {onnx.TensorProto.UINT8}
    assert again.stored.verify() == []
    # Made for this CPU now: asking again changes nothing.
    assert _deploy_int8(store, tiny_model_dir, tiny_catalog, NO_VNNI).changed is False


def _load_int8(var_dir: Path, model_dir: Path, cpu: CpuFeatures) -> dict[str, Any]:
    """Register and load the model in int8 in a sidecar on ``cpu``; its description."""

    async def scenario() -> dict[str, Any]:
        sidecar = Sidecar(var_dir, cpu=cpu)
        try:
            described, _ = await sidecar.register(TINY_URI, str(model_dir), precision="int8")
            return described
        finally:
            await sidecar.stop()

    return asyncio.run(scenario())


@pytest.fixture
def made_on_vnni(tmp_path: Path, tiny_model_dir: Path, tiny_catalog: Catalog) -> StoredModel:
    """The tiny model deployed with its int8 variant quantised as s8 on a VNNI machine."""
    store = ModelStore(tmp_path / "models")
    return _deploy_int8(store, tiny_model_dir, tiny_catalog, VNNI).stored


def _checks(var_dir: Path) -> dict[str, Any]:
    path = var_dir / "sidecar" / "int8_checks.json"
    checks: dict[str, Any] = json.loads(path.read_text())["checks"] if path.exists() else {}
    return checks


def test_int8_made_for_vnni_is_checked_again_on_a_cpu_without_it_once(
    tmp_path: Path, made_on_vnni: StoredModel, caplog: pytest.LogCaptureFixture
) -> None:
    var_dir = tmp_path / "var"
    manifest_before = (made_on_vnni.path / "manifest.json").read_bytes()
    with caplog.at_level(logging.INFO, logger="inference.sidecar"):
        described = _load_int8(var_dir, made_on_vnni.path, NO_VNNI)
    assert described["loaded"] is True and described["precision"] == "int8"
    logged = [r.getMessage() for r in caplog.records if "checked again" in r.getMessage()]
    assert len(logged) == 1
    assert f"made as s8 weights on {VNNI.model} (avx2, avx512f, avx512_vnni" in logged[0]
    assert "AMD EPYC 7B12 (avx2; native int8 format u8)" in logged[0] and "ran in" in logged[0]
    (entry,) = _checks(var_dir).values()
    sha = made_on_vnni.manifest["files"][made_on_vnni.manifest["onnx"]["int8"]]
    assert entry["int8_sha256"] == sha and entry["cpu"] == NO_VNNI.signature()
    report = entry["report"]
    assert report["passed"] is True and report["format"] == "s8"
    assert report["cpu"]["model"] == NO_VNNI.model
    # The store's manifest is left as deployed: the figures measured here live in the sidecar.
    assert (made_on_vnni.path / "manifest.json").read_bytes() == manifest_before
    assert made_on_vnni.verify() == []

    # Loaded again (a restart): the verdict is remembered, the gate does not run again.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="inference.sidecar"):
        _load_int8(tmp_path / "var", made_on_vnni.path, NO_VNNI)
    logged = [r.getMessage() for r in caplog.records if "checked again" in r.getMessage()]
    assert len(logged) == 1 and "remembered from an earlier load" in logged[0]
    assert _checks(var_dir) == {sha + " " + NO_VNNI.signature(): entry}


def test_int8_served_on_a_cpu_of_its_own_format_is_not_checked_again(
    tmp_path: Path, made_on_vnni: StoredModel, caplog: pytest.LogCaptureFixture
) -> None:
    other_vnni = CpuFeatures("Intel(R) Xeon(R) Gold 6338", frozenset({"avx2", "avx512_vnni"}))
    with caplog.at_level(logging.INFO, logger="inference.sidecar"):
        described = _load_int8(tmp_path / "var", made_on_vnni.path, other_vnni)
    assert described["loaded"] is True
    assert not [r for r in caplog.records if "checked again" in r.getMessage()]
    assert _checks(tmp_path / "var") == {}


def test_int8_that_fails_its_gate_on_this_cpu_is_refused_saying_what_to_do(
    tmp_path: Path, made_on_vnni: StoredModel
) -> None:
    # The same files, with thresholds that no int8 variant reaches: the check here fails.
    model_dir = tmp_path / "strict" / "v1"
    shutil.copytree(made_on_vnni.path, model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["quality"]["int8"]["thresholds"] = {"mean_cos": 1.01, "top10_agreement": 1.01}
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    var_dir = tmp_path / "var"
    for _ in range(2):  # the second refusal comes from the remembered verdict
        with pytest.raises(ModelLoadError) as info:
            _load_int8(var_dir, model_dir, NO_VNNI)
        message = info.value.message
        assert message.startswith(f"refusing to load model {TINY_URI} in int8: ")
        assert f"made as s8 weights on {VNNI.model}" in message
        assert re.search(r"mean cosine [01]\.\d{4} \(needs 1\.01\)", message)
        assert re.search(r"top-10 agreement [01]\.\d{3} \(95% interval", message)
        assert "load the model in fp32" in message
        assert "deploy it again with precision int8 on this machine" in message
    (entry,) = _checks(var_dir).values()
    assert entry["report"]["passed"] is False
