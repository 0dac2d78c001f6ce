"""``python -m inference``: deploy, models, remove and their exit codes, run as subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from inference.config import PROJECT_ROOT
from tests.fixtures.realmodel import write_catalog
from tests.fixtures.sidecar import free_port


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A private VAR_DIR and Hugging Face home, and a catalog with the tiny model."""
    values = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "INFERENCE_"))}
    values.update(
        VAR_DIR=str(tmp_path / "var"),
        HF_HOME=str(tmp_path / "hf-home"),
        INFERENCE_CATALOG=str(write_catalog(tmp_path / "catalog.json")),
    )
    return values


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # The timeout only guards against a hang; it is not what the tests check.
    return subprocess.run(
        [sys.executable, "-m", "inference", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_deploy_then_models_lists_the_verified_model(
    env: dict[str, str], tiny_model_dir: Path
) -> None:
    deployed = run(env, "deploy", "tiny-model:v1", "--source", str(tiny_model_dir))
    assert deployed.returncode == 0, deployed.stderr
    path = Path(deployed.stdout.strip())
    assert path == Path(env["VAR_DIR"]) / "models" / "tiny-model" / "v1"
    assert (path / "manifest.json").is_file()
    for step in ("[fetch]", "[verify]", "[prepare]", "[install]"):
        assert step in deployed.stderr

    listing = run(env, "models")
    assert listing.returncode == 0, listing.stderr
    header, row = listing.stdout.strip().splitlines()
    assert header.split() == ["URI", "PRECISION", "DIMS", "SIZE", "SOURCE", "VERIFIED"]
    cells = row.split()
    assert cells[0:3] == ["tiny-model:v1", "fp32", "32"]
    assert cells[-2].startswith("local:") and cells[-1] == "yes"

    again = run(env, "deploy", "tiny-model:v1", "--source", str(tiny_model_dir))
    assert again.returncode == 0 and "skipped" in again.stderr

    (path / "tokenizer.json").write_text("{}")
    rows = json.loads(run(env, "models", "--json").stdout)
    assert [(r["uri"], r["verified"]) for r in rows] == [("tiny-model:v1", "no")]


def test_if_missing_leaves_a_deployed_model_alone(
    env: dict[str, str], tiny_model_dir: Path
) -> None:
    assert run(env, "deploy", "tiny-model:v1", "--source", str(tiny_model_dir)).returncode == 0
    again = run(env, "deploy", "tiny-model:v1", "--source", "/nonexistent", "--if-missing")
    assert again.returncode == 0
    assert "already deployed" in again.stderr and "[fetch]" not in again.stderr


def test_unknown_model_is_a_one_line_error_listing_the_known_ones(env: dict[str, str]) -> None:
    result = run(env, "deploy", "nope:v9")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("error: ") and "tiny-model:v1" in lines[0]


def test_hub_deploy_without_network_fails_with_how_to_deploy_a_local_copy(
    env: dict[str, str],
) -> None:
    del env["INFERENCE_CATALOG"]  # the shipped catalog: the real multilingual-e5-small
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = run(env, "deploy", "multilingual-e5-small:v1")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1
    assert "--source /path/to/multilingual-e5-small" in error[0]
    assert not (Path(env["VAR_DIR"]) / "models" / "multilingual-e5-small" / "v1").exists()


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("settings.json", "[]", "delete the file to return to the defaults"),
        ("registry.json", "{not json", "move it aside and register the models again"),
    ],
)
def test_serve_with_a_damaged_state_file_is_a_one_line_error(
    env: dict[str, str], name: str, content: str, says: str
) -> None:
    state = Path(env["VAR_DIR"]) / "sidecar"
    state.mkdir(parents=True)
    (state / name).write_text(content)
    result = run(env, "serve", "--port", str(free_port()))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and says in result.stderr
    assert str(state / name) in result.stderr


def test_remove_deletes_and_then_reports_absence(env: dict[str, str], tiny_model_dir: Path) -> None:
    assert run(env, "deploy", "tiny-model:v1", "--source", str(tiny_model_dir)).returncode == 0
    assert run(env, "remove", "tiny-model:v1").returncode == 0
    assert "no models" in run(env, "models").stdout
    missing = run(env, "remove", "tiny-model:v1")
    assert missing.returncode == 1 and "not in the model store" in missing.stderr


def test_register_to_an_unreachable_sidecar_is_a_one_line_error(
    env: dict[str, str], tiny_model_dir: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run(env, "deploy", "tiny-model:v1", "--source", str(tiny_model_dir), "--register", url)
    assert result.returncode == 1
    assert (
        "cannot reach the inference sidecar" in result.stderr and "Traceback" not in result.stderr
    )


def test_register_loads_the_deployed_model_in_a_running_sidecar(
    env: dict[str, str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from tests.fixtures.sidecar import start_sidecar

    sidecar = start_sidecar(tmp_path / "sidecar-var")
    try:
        args = (
            "deploy",
            "tiny-model:v1",
            "--source",
            str(tiny_model_dir),
            "--register",
            sidecar.url,
        )
        result = run(env, *args)
        assert result.returncode == 0, result.stderr
        info = httpx.get(f"{sidecar.url}/models/tiny-model:v1").json()
        assert info["loaded"] is True
        assert Path(info["model_path"]) == Path(result.stdout.strip())
        reply = httpx.post(
            f"{sidecar.url}/v1/embeddings", json={"model": "tiny-model:v1", "input": "hello"}
        )
        assert len(reply.json()["data"][0]["embedding"]) == 32
        again = run(env, *args)  # registering the same path again is idempotent
        assert again.returncode == 0, again.stderr
        assert f"(id {info['id']})" in again.stderr
    finally:
        sidecar.stop()
