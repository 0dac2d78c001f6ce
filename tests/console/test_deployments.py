"""The deployment pipeline end to end: a real Celery worker (Redis broker), the real sidecar,
the real managed server with the azure_local_ai module, and the console's views."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from django.contrib.auth.models import Group, User
from django.db import IntegrityError, transaction
from django.test import Client
from django.utils import timezone

from console.deployments import dispatch, pipeline, service
from console.deployments.models import Deployment, DeploymentStep
from console.roles import ADMIN, READER
from inference.store import ModelStore
from serverparams.models import ParameterChange
from tests.console.stack import (
    E5_URI,
    HUGE_URI,
    PROJECT_ROOT,
    Stack,
    drop_database,
    scratch_database,
)
from tests.fixtures.fakehub import E5_REPO as E5_REPO_ID
from tests.fixtures.fakehub import FakeHub, publish_e5_repo
from tests.fixtures.realmodel import TINY_URI
from tests.fixtures.tinymodel import make_tiny_model

HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "param-results"}


def _user(name: str, role: str) -> User:
    user = User.objects.create_user(name, password="pw-for-tests-only")
    user.groups.add(Group.objects.get(name=role))
    return user


def _client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _steps(deployment: Deployment) -> dict[str, str]:
    return {step.name: step.state for step in deployment.steps.all()}


def _deploy(stack: Stack, tiny_model_dir: Path, **kwargs: object) -> Deployment:
    admin = User.objects.filter(username="ops").first() or _user("ops", ADMIN)
    return service.start(TINY_URI, admin, source=str(tiny_model_dir), **kwargs)  # type: ignore[arg-type]


def test_deploy_runs_every_step_then_sql_embeds_with_the_model(
    stack: Stack, tiny_model_dir: Path
) -> None:
    deployment = stack.wait(_deploy(stack, tiny_model_dir))
    assert deployment.state == "succeeded", deployment.error
    steps = _steps(deployment)
    assert list(steps) == [s.name for s in pipeline.STEPS_BY_ACTION["enable"]]
    assert set(steps.values()) <= {"succeeded", "skipped"}
    assert steps["fetch"] == steps["register"] == steps["allowlist"] == "succeeded"
    warmup = deployment.steps.get(name="warmup")
    assert "32 dimensions, norm 1.0000" in warmup.message
    assert {"azure_local_ai", "vector"} <= set(stack.allowlist().split(","))
    change = ParameterChange.objects.get(parameter="azure.extensions")
    assert change.username == f"ops (deployment #{deployment.pk})"
    assert ModelStore(stack.models_dir).get(TINY_URI) is not None
    assert stack.sidecar.client.model(TINY_URI)["loaded"] is True

    scratch_database(stack.server, "deployed")
    try:
        with stack.server.connect("deployed") as conn:
            conn.execute("CREATE EXTENSION vector")
            conn.execute("CREATE EXTENSION azure_local_ai")
            row = conn.execute(
                "SELECT vector_dims(azure_local_ai.create_embeddings(%s, 'hello world')::vector)",
                [TINY_URI],
            ).fetchone()
        assert row == (32,)
    finally:
        drop_database(stack.server, "deployed")

    # Deploying again finds everything in place: each step that holds is skipped.
    again = stack.wait(service.retry(deployment, deployment.requested_by))
    assert again.state == "succeeded"
    assert _steps(again)["fetch"] == "skipped"
    assert _steps(again)["register"] == "skipped"
    assert _steps(again)["allowlist"] == "skipped"


def test_saving_azure_local_ai_asks_first_then_deploys_and_allows_it(
    stack: Stack, tiny_model_dir: Path
) -> None:
    admin = _client(_user("ada", ADMIN))
    before = stack.allowlist()
    form = {"name": "azure.extensions", "value:azure.extensions": "azure_local_ai",
            "base:azure.extensions": before}  # fmt: skip
    dialog = admin.post("/parameters/save/", form, **HTMX)
    page = dialog.content.decode()
    assert dialog["HX-Retarget"] == "#dialog-host"
    assert "tiny-model:v1" in page and "https://opensource.org/license/mit" in page
    assert "16 MB" in page and "third-party open-source models" in page
    assert not Deployment.objects.exists() and stack.allowlist() == before

    confirmed = admin.post(
        "/parameters/save/",
        {**form, "confirm_extensions": "1", "deploy_source": str(tiny_model_dir)},
        **HTMX,
    )
    assert confirmed.status_code == 200, confirmed.content.decode()[:2000]
    deployment = Deployment.objects.get()
    assert "Follow the deployment" in confirmed.content.decode()
    assert "azure_local_ai" not in stack.allowlist().split(",")  # not before the model is ready
    assert stack.wait(deployment).state == "succeeded"
    assert "azure_local_ai" in stack.allowlist().split(",")
    page = admin.get(f"/deployments/{deployment.pk}/").content.decode()
    assert "create_embeddings('tiny-model:v1'" in page
    bell = admin.get("/").content.decode()
    assert "tiny-model:v1 ready" in bell


def test_bad_choices_in_the_dialog_start_nothing(stack: Stack) -> None:
    admin = _client(_user("ada", ADMIN))
    form = {"name": "azure.extensions", "value:azure.extensions": "azure_local_ai",
            "base:azure.extensions": stack.allowlist(), "confirm_extensions": "1",
            "deploy_source": "/no/such/folder"}  # fmt: skip
    response = admin.post("/parameters/save/", form, **HTMX)
    assert "is not a folder" in response.content.decode()
    assert not Deployment.objects.exists()


def test_a_second_deployment_of_the_same_model_is_refused(
    stack: Stack, tiny_model_dir: Path
) -> None:
    stack.worker.stop()  # nobody takes the first one: it stays queued
    first = _deploy(stack, tiny_model_dir)
    with pytest.raises(service.DeploymentConflict, match=f"#{first.pk}"):
        _deploy(stack, tiny_model_dir)
    # The database refuses it too, whoever asks.
    with pytest.raises(IntegrityError), transaction.atomic():
        Deployment.objects.create(model_uri=TINY_URI)
    assert service.cancel(first)
    assert Deployment.objects.get(pk=first.pk).state == "cancelled"


def test_cancel_stops_at_a_step_boundary_and_leaves_nothing_half_written(
    stack: Stack, tiny_model_dir: Path
) -> None:
    deployment = _deploy(stack, tiny_model_dir, precision="int8")
    stack.wait_for(
        "the prepare step",
        lambda: deployment.steps.filter(name="prepare", state="running").exists(),
    )
    assert service.cancel(deployment)
    final = stack.wait(deployment)
    assert final.state == "cancelled"
    assert _steps(final)["register"] == "cancelled"
    model_dir = stack.models_dir / "tiny-model"
    assert not (model_dir / "v1").exists()
    assert not list(model_dir.glob(".staging-*"))
    assert TINY_URI not in {m["model_uri"] for m in stack.sidecar.client.models()}


def test_a_failed_deployment_names_the_step_and_a_retry_finishes_it(
    stack: Stack, tiny_model_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, source)
    (source / "tokenizer.json").rename(tmp_path / "tokenizer.json")
    failed = stack.wait(_deploy(stack, source))
    assert failed.state == "failed"
    assert failed.error.startswith("Fetch failed:") and "tokenizer.json" in failed.error
    assert _steps(failed)["fetch"] == "failed" and _steps(failed)["install"] == "cancelled"
    assert ModelStore(stack.models_dir).get(TINY_URI) is None

    (tmp_path / "tokenizer.json").rename(source / "tokenizer.json")
    retried = stack.wait(service.retry(failed, failed.requested_by))
    assert retried.state == "succeeded" and retried.retry_of_id == failed.pk


@pytest.mark.worker_env({"HF_HUB_OFFLINE": "", "HF_ENDPOINT": "http://127.0.0.1:9"})
def test_hub_without_network_fails_fast_saying_how_to_deploy_a_local_copy(stack: Stack) -> None:
    admin = _user("ops", ADMIN)
    failed = stack.wait(service.start(E5_URI, admin, source="hub"), 60)
    assert failed.state == "failed"
    assert "Fetch failed" in failed.error
    assert "--source /path/to/multilingual-e5-small" in failed.error
    assert failed.duration_s is not None and failed.duration_s < 30


def test_a_source_without_onnx_and_no_export_extra_says_what_to_install(
    stack: Stack, tmp_path: Path
) -> None:
    # The worker is started again where `import torch` fails, as without the export extra.
    blocker = tmp_path / "no-torch" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named torch')\n")
    stack.worker.stop()
    stack.worker.env["PYTHONPATH"] = str(blocker.parent)
    stack.worker.restart()
    source = make_tiny_model(tmp_path / "weights-only", onnx_file=False)
    (source / "model.safetensors").write_bytes(b"weights to export")
    failed = stack.wait(_deploy(stack, source))
    assert failed.state == "failed"
    assert "Prepare failed" in failed.error
    assert "pip install '.[export]'" in failed.error


def test_disable_unloads_the_model_and_sql_calls_say_it_is_not_deployed(
    stack: Stack, tiny_model_dir: Path
) -> None:
    assert stack.wait(_deploy(stack, tiny_model_dir)).state == "succeeded"
    scratch_database(stack.server, "still_using")
    try:
        with stack.server.connect("still_using") as conn:
            conn.execute("CREATE EXTENSION azure_local_ai")
        admin = _client(User.objects.get(username="ops"))
        allowlist = stack.allowlist()
        remaining = ",".join(m for m in allowlist.split(",") if m != "azure_local_ai")
        form = {"name": "azure.extensions", "value:azure.extensions": remaining,
                "base:azure.extensions": allowlist}  # fmt: skip
        warning = admin.post("/parameters/save/", form, **HTMX).content.decode()
        assert "still have the extension installed" in warning and "still_using" in warning
        assert stack.allowlist() == allowlist  # nothing applied before the confirmation

        done = admin.post("/parameters/save/", {**form, "confirm_extensions": "1"}, **HTMX)
        assert done.status_code == 200
        assert "azure_local_ai" not in stack.allowlist().split(",")
        disable = Deployment.objects.get(action="disable")
        assert stack.wait(disable).state == "succeeded"
        assert stack.sidecar.client.model(TINY_URI)["loaded"] is False
        with (
            stack.server.connect("still_using") as conn,
            pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="is not deployed"),
        ):
            conn.execute("SELECT azure_local_ai.create_embeddings(%s, 'x')", [TINY_URI])
    finally:
        drop_database(stack.server, "still_using")


def test_only_admins_may_deploy_cancel_or_retry(stack: Stack, tiny_model_dir: Path) -> None:
    reader = _client(_user("rita", READER))
    response = reader.post(f"/models/{TINY_URI}/deploy/", {"source": str(tiny_model_dir)})
    assert response.status_code == 403
    assert not Deployment.objects.exists()
    deployment = stack.wait(_deploy(stack, tiny_model_dir))
    assert reader.post(f"/deployments/{deployment.pk}/retry/").status_code == 403
    assert reader.get(f"/deployments/{deployment.pk}/").status_code == 200
    page = reader.get(f"/models/{TINY_URI}/").content.decode()
    assert "Only admins may deploy" in page


def test_models_page_lists_the_catalog_with_licenses_files_and_hashes(
    stack: Stack, tiny_model_dir: Path
) -> None:
    admin = _client(_user("ada", ADMIN))
    listing = admin.get("/models/").content.decode()
    for text in ("multilingual-e5-small:v1", "all-MiniLM-L6-v2:v1", "Apache-2.0", "MIT"):
        assert text in listing
    response = admin.post(f"/models/{TINY_URI}/deploy/", {"source": str(tiny_model_dir)})
    assert response.status_code == 302
    deployment = Deployment.objects.get()
    assert response["Location"] == f"/deployments/{deployment.pk}/"
    assert stack.wait(deployment).state == "succeeded"
    page = admin.get(f"/models/{TINY_URI}/").content.decode()
    stored = ModelStore(stack.models_dir).get(TINY_URI)
    assert stored is not None
    for rel, digest in stored.manifest["files"].items():
        assert rel in page and digest in page
    assert "Deployed" in page and "Disable (unload)" in page


def test_a_worker_killed_mid_deployment_is_resumed_by_the_next_worker(
    stack: Stack, tiny_model_dir: Path
) -> None:
    deployment = _deploy(stack, tiny_model_dir, precision="int8")
    stack.wait_for(
        "the prepare step",
        lambda: deployment.steps.filter(name="prepare", state="running").exists(),
    )
    stack.worker.kill()
    assert Deployment.objects.get(pk=deployment.pk).state == "running"
    stack.worker.restart()
    final = stack.wait(deployment)
    assert final.state == "succeeded", final.error
    assert final.attempts == 2
    prepare = final.steps.get(name="prepare")
    assert any("stopped" in line and "resuming" in line for line in prepare.log_lines)
    assert not list((stack.models_dir / "tiny-model").glob(".staging-*"))
    # The model's page gives the gate's figures, and which products stayed fp32 (none here).
    page = _client(_user("ada", ADMIN)).get(f"/models/{TINY_URI}/").content.decode()
    assert "Passed: int8 available" in page
    assert '<dd id="kept-fp32">none of 1 matrix products</dd>' in page


def test_a_deployment_whose_worker_died_is_resumed_by_the_sweeper(
    stack: Stack, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patched:  # the task is lost with the worker that held it
        patched.setattr(dispatch, "run_deployment", lambda deployment_id: None)
        deployment = _deploy(stack, tiny_model_dir)
    Deployment.objects.filter(pk=deployment.pk).update(
        state="running", worker="elsewhere:1", attempts=1, heartbeat_at=None
    )
    DeploymentStep.objects.filter(deployment=deployment, name="fetch").update(state="running")
    final = stack.wait(deployment)  # nobody views a page: beat's sweep finds it
    assert final.state == "succeeded", final.error
    assert final.attempts == 2
    assert "resuming" in final.steps.get(name="fetch").log


def test_a_deployment_whose_worker_stopped_too_often_fails_with_the_reason(
    stack: Stack, tiny_model_dir: Path
) -> None:
    stack.worker.stop()
    deployment = _deploy(stack, tiny_model_dir)
    Deployment.objects.filter(pk=deployment.pk).update(
        state="running", worker="elsewhere:1", attempts=pipeline.MAX_ATTEMPTS, heartbeat_at=None
    )
    DeploymentStep.objects.filter(deployment=deployment, name="fetch").update(state="running")
    assert pipeline.recover_stopped() == []
    failed = Deployment.objects.get(pk=deployment.pk)
    assert failed.state == "failed"
    assert "stopped during fetch" in failed.error and "Retry" in failed.error


def _from_fake_hub(stack: Stack, hub: FakeHub, tmp_path: Path) -> None:
    """Restart the worker so that it reaches the Hub at ``hub``, with a cache of its own."""
    stack.worker.stop()
    stack.worker.restart(
        HF_ENDPOINT=hub.endpoint, HF_HUB_OFFLINE="", HF_HOME=str(tmp_path / "hf-home")
    )


def test_hub_deployment_downloads_verifies_and_serves(
    stack: Stack, fake_hub: FakeHub, tmp_path: Path
) -> None:
    publish_e5_repo(fake_hub, tmp_path / "e5-repo")
    _from_fake_hub(stack, fake_hub, tmp_path)
    deployment = stack.wait(service.start(E5_URI, _user("ops", ADMIN)))
    assert deployment.state == "succeeded", deployment.error
    assert fake_hub.downloads()
    fetch = deployment.steps.get(name="fetch")
    assert fetch.total > 0 and fetch.done == fetch.total and fetch.unit == "bytes"
    verify = deployment.steps.get(name="verify")
    assert "match the hashes their source published" in verify.message
    assert stack.sidecar.client.model(E5_URI)["loaded"] is True


def test_a_corrupted_hub_file_fails_verify_and_is_never_served(
    stack: Stack, fake_hub: FakeHub, tmp_path: Path
) -> None:
    publish_e5_repo(fake_hub, tmp_path / "e5-repo")
    fake_hub.corrupt.add("onnx/model.onnx")
    _from_fake_hub(stack, fake_hub, tmp_path)
    failed = stack.wait(service.start(E5_URI, _user("ops", ADMIN)))
    assert failed.state == "failed"
    assert failed.error.startswith("Verify failed:") and "onnx/model.onnx" in failed.error
    assert ModelStore(stack.models_dir).get(E5_URI) is None
    assert E5_URI not in {m["model_uri"] for m in stack.sidecar.client.models()}


def test_a_worker_killed_mid_fetch_is_resumed_to_ready(
    stack: Stack, fake_hub: FakeHub, tmp_path: Path
) -> None:
    repo = publish_e5_repo(fake_hub, tmp_path / "e5-repo")
    onnx_size = len(repo.files["onnx/model.onnx"].data)
    fake_hub.throttle_bytes_per_s = max(1, onnx_size // 20)  # about 20 s for the graph
    _from_fake_hub(stack, fake_hub, tmp_path)
    deployment = service.start(E5_URI, _user("ops", ADMIN))
    # The small files arrive at once; the graph takes about 20 s: kill in the middle of it.
    stack.wait_for("the first files", lambda: "config.json" in fake_hub.downloaded(E5_REPO_ID))
    assert "onnx/model.onnx" not in fake_hub.downloaded(E5_REPO_ID)
    assert deployment.steps.get(name="fetch").state == "running"
    stack.worker.kill()
    fake_hub.throttle_bytes_per_s = None
    stack.worker.restart()
    final = stack.wait(deployment)
    assert final.state == "succeeded", final.error
    assert final.attempts == 2
    fetch = final.steps.get(name="fetch")
    assert any("stopped during fetch: resuming" in line for line in fetch.log_lines)
    assert not list((stack.models_dir / "multilingual-e5-small").glob(".staging-*"))


@pytest.mark.realmodel
def test_all_minilm_deploys_from_its_package_and_embeds_in_sql(stack: Stack) -> None:
    pytest.importorskip("torch", reason="needs the 'export' extra (torch) to export the model")
    uri = "all-MiniLM-L6-v2:v1"
    deployment = stack.wait(service.start(uri, _user("ops", ADMIN)), 300)
    assert deployment.state == "succeeded", deployment.error
    prepare = deployment.steps.get(name="prepare")
    assert any("exported graph matches PyTorch" in line for line in prepare.log_lines)
    assert "384 dimensions, norm 1.0000" in deployment.steps.get(name="warmup").message

    scratch_database(stack.server, "minilm")
    try:
        with stack.server.connect("minilm") as conn:
            conn.execute("CREATE EXTENSION vector")
            conn.execute("CREATE EXTENSION azure_local_ai")
            embed = "azure_local_ai.create_embeddings(%(uri)s, {})::vector"
            near, far, dims = conn.execute(
                f"SELECT {embed.format('%(a)s')} <=> {embed.format('%(b)s')},"
                f" {embed.format('%(a)s')} <=> {embed.format('%(c)s')},"
                f" vector_dims({embed.format('%(a)s')})",
                {
                    "uri": uri,
                    "a": "A cat sits on the mat.",
                    "b": "A kitten is resting on a rug.",
                    "c": "Quarterly revenue grew by four percent.",
                },
            ).fetchone()
        assert dims == 384
        assert near < far
    finally:
        drop_database(stack.server, "minilm")


@pytest.mark.worker_env({"INFERENCE_URL": "http://127.0.0.1:9"})
def test_preflight_refuses_when_the_sidecar_is_down(stack: Stack, tiny_model_dir: Path) -> None:
    failed = stack.wait(_deploy(stack, tiny_model_dir))
    assert failed.state == "failed"
    assert failed.error.startswith("Preflight failed: the inference sidecar is down")
    assert "http://127.0.0.1:9" in failed.error
    assert _steps(failed)["fetch"] == "cancelled"


def test_preflight_refuses_a_model_this_machine_cannot_hold(
    stack: Stack, tiny_model_dir: Path
) -> None:
    failed = stack.wait(service.start(HUGE_URI, _user("ops", ADMIN), source=str(tiny_model_dir)))
    assert failed.state == "failed"
    assert failed.error.startswith("Preflight failed: this machine cannot host the model")
    assert "needs 100000000 MB of memory" in failed.error


def test_deploy_command_prints_the_steps_as_they_go(stack: Stack, tiny_model_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "deploy", TINY_URI, "--source", str(tiny_model_dir),
         "--wait"],
        cwd=PROJECT_ROOT, env=stack.worker.env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "(queued)" in out and "succeeded" in out
    for step in ("[preflight]", "[fetch]", "[register]", "[warm up]", "[allowlist]"):
        assert step in out
    refused = subprocess.run(
        [sys.executable, "manage.py", "deploy", "nope:v1"],
        cwd=PROJECT_ROOT, env=stack.worker.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "is not in the catalog" in refused.stderr


def test_a_deployment_the_broker_refused_is_sent_again_once_it_is_back(
    stack: Stack, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broker_down(*args: object, **kwargs: object) -> None:
        raise ConnectionRefusedError("the broker is down")

    monkeypatch.setattr(dispatch, "run_deployment", broker_down)
    deployment = _deploy(stack, tiny_model_dir)
    deployment.refresh_from_db()
    assert deployment.state == "queued" and deployment.sent_at is None
    monkeypatch.undo()  # the broker is back
    Deployment.objects.filter(pk=deployment.pk).update(
        created_at=timezone.now() - timedelta(seconds=30)
    )
    # No page view is needed: the sweeper, which beat sends, sends it again.
    assert stack.wait(deployment).state == "succeeded"
    assert Deployment.objects.get(pk=deployment.pk).sent_at is not None


def test_a_failure_between_two_steps_belongs_to_the_next_one(
    stack: Stack, tiny_model_dir: Path
) -> None:
    stack.worker.stop()
    deployment = _deploy(stack, tiny_model_dir)
    names = [step.name for step in pipeline.STEPS_BY_ACTION["enable"]]
    deployment.steps.filter(name=names[0]).update(state=DeploymentStep.State.SUCCEEDED)
    recorder = pipeline.Recorder(deployment)
    assert recorder.failing_step(names) == names[1] == "fetch"
    recorder.current = "verify"
    assert recorder.failing_step(names) == "verify"
    assert service.cancel(deployment)
