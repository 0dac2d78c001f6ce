"""The sidecar as a process: restarts, a model that fails to reload, the token, the socket,
and the client's errors when the sidecar is away."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from inference.app import ExposureError, check_exposure, unix_listener
from inference.client import InferenceClient, InferenceError, InferenceUnavailable
from tests.fixtures.sidecar import PROJECT_ROOT, TINY_URI, free_port, start_sidecar
from tests.fixtures.tinymodel import HIDDEN


def environ_without_token() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "INFERENCE_TOKEN"}


def test_registry_settings_and_loaded_models_survive_a_restart(
    tmp_path: Path, tiny_model_dir: Path, tiny_cls_model_dir: Path
) -> None:
    var_dir = tmp_path / "var"
    first = start_sidecar(var_dir)
    try:
        tiny = first.client.register(TINY_URI, str(tiny_model_dir))
        idle = first.client.register("cls:v1", str(tiny_cls_model_dir), load=False)
        assert first.client.update_settings({"max_wait_ms": 7})["max_wait_ms"] == 7
        before, _ = first.client.embed(TINY_URI, ["a red car", "the river"])
    finally:
        # uvicorn shuts down cleanly on SIGTERM, then exits by that signal as it arrived.
        assert first.stop() in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in first.log()

    second = start_sidecar(var_dir)
    try:
        client = second.client
        assert client.model(TINY_URI)["id"] == tiny["id"]
        assert client.model("cls:v1")["id"] == idle["id"]
        health = client.health()
        assert health["status"] == "ok"
        assert {"model_uri": TINY_URI, "loaded": True} in health["models"]
        assert {"model_uri": "cls:v1", "loaded": False} in health["models"]
        assert client.settings()["max_wait_ms"] == 7
        after, _ = client.embed(TINY_URI, ["a red car", "the river"])
        np.testing.assert_allclose(after, before, atol=1e-6)
        # A new registration continues the numbering instead of reusing an id.
        again = client.register("tiny-again:v1", str(tiny_model_dir), load=False)
        assert again["id"] > max(tiny["id"], idle["id"])
    finally:
        second.stop()


def test_a_model_that_fails_to_reload_is_reported_not_fatal(
    tmp_path: Path, tiny_model_dir: Path, tiny_cls_model_dir: Path
) -> None:
    fragile_dir = tmp_path / "fragile"
    shutil.copytree(tiny_cls_model_dir, fragile_dir)
    var_dir = tmp_path / "var"
    first = start_sidecar(var_dir)
    try:
        first.client.register(TINY_URI, str(tiny_model_dir))
        first.client.register("fragile:v1", str(fragile_dir))
    finally:
        first.kill()  # a crash: nothing gets to write anything on the way out
    (fragile_dir / "onnx" / "model.onnx").unlink()

    second = start_sidecar(var_dir)
    try:
        health = second.client.health()
        assert health["status"] == "degraded"
        fragile = next(m for m in health["models"] if m["model_uri"] == "fragile:v1")
        assert fragile["loaded"] is False
        assert "model.onnx" in fragile["error"]
        assert "fragile:v1" in second.log()
        vectors, _ = second.client.embed(TINY_URI, ["still serving"])
        assert vectors.shape == (1, HIDDEN)
        with pytest.raises(InferenceError) as excinfo:
            second.client.embed("fragile:v1", ["cat"])
        assert (excinfo.value.status, excinfo.value.code) == (409, "model_not_loaded")
        assert "last load failed" in excinfo.value.message
        assert "model.onnx" in second.client.model("fragile:v1")["load_error"]
    finally:
        second.stop()


def test_token_guards_everything_but_health(tmp_path: Path, tiny_model_dir: Path) -> None:
    process = start_sidecar(tmp_path / "var", env={"INFERENCE_TOKEN": "s3cret"})
    try:
        assert process.client.register(TINY_URI, str(tiny_model_dir))["loaded"] is True
        url = process.url
        assert httpx.get(f"{url}/health").status_code == 200
        for method, path in (
            ("GET", "/settings"),
            ("GET", "/metrics"),
            ("GET", "/models"),
            ("POST", "/v1/embeddings"),
        ):
            response = httpx.request(method, url + path, json={"model": TINY_URI, "input": "cat"})
            assert response.status_code == 401, path
            assert response.json()["error"]["code"] == "unauthorized"
            assert "Authorization: Bearer" in response.json()["error"]["message"]
        wrong = httpx.get(f"{url}/models", headers={"Authorization": "Bearer s3cres"})
        assert wrong.status_code == 401
        right = httpx.get(f"{url}/models", headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200

        with pytest.raises(InferenceError) as excinfo:
            InferenceClient(url, token="").settings()
        assert (excinfo.value.status, excinfo.value.code) == (401, "unauthorized")

        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        keyed = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert len(keyed.embeddings.create(model=TINY_URI, input="cat").data) == 1
    finally:
        process.stop()


def test_serves_on_a_unix_socket(tmp_path: Path, tiny_model_dir: Path) -> None:
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    socket_path = tmp_path / "sidecar.sock"
    log = (var_dir / "uds.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "inference", "serve", "--uds", str(socket_path)],
        cwd=PROJECT_ROOT,
        env={**environ_without_token(), "VAR_DIR": str(var_dir), "HF_HUB_OFFLINE": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with InferenceClient(f"unix:{socket_path}", token="") as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    assert client.health()["status"] == "ok"
                    break
                except InferenceUnavailable:
                    assert process.poll() is None, (var_dir / "uds.log").read_text()
                    assert time.monotonic() < deadline, "the sidecar never answered on its socket"
                    time.sleep(0.1)
            client.register(TINY_URI, str(tiny_model_dir))
            vectors, usage = client.embed(TINY_URI, ["over a socket"])
            assert vectors.shape == (1, HIDDEN) and usage["prompt_tokens"] > 2
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_client_names_the_url_when_the_sidecar_is_away() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(InferenceUnavailable) as excinfo:
        InferenceClient(url, token="", timeout=5).health()
    assert url in str(excinfo.value)
    assert "python -m inference serve" in str(excinfo.value)
    assert excinfo.value.status is None


def test_the_sidecar_refuses_to_listen_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "inference", "serve", "--host", "0.0.0.0", "--port", "0"],
        cwd=PROJECT_ROOT,
        env={**environ_without_token(), "VAR_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert "refusing to listen on 0.0.0.0" in refused.stderr and "INFERENCE_TOKEN" in refused.stderr


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_needs_no_token(host: str) -> None:
    check_exposure(host, "")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7"])
def test_any_other_address_needs_a_token(host: str) -> None:
    with pytest.raises(ExposureError, match="INFERENCE_TOKEN"):
        check_exposure(host, "")
    check_exposure(host, "a-token")


def test_the_extra_unix_socket_replaces_a_stale_one_and_never_steals_a_live_one() -> None:
    directory = Path(tempfile.mkdtemp(prefix="alai-"))  # short: socket paths are limited
    path = directory / "inference.sock"
    try:
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(path))
        stale.close()  # the file stays, nobody listens: what a killed sidecar leaves
        fresh = unix_listener(path)
        assert path.stat().st_mode & 0o777 == 0o666
        fresh.listen()
        with pytest.raises(SystemExit, match="already listens on the Unix socket"):
            unix_listener(path)
        fresh.close()
    finally:
        shutil.rmtree(directory)
