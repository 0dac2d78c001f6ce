"""Adding and removing models from the console and ``manage.py addmodel``, all real: the page
inspects a generated folder, the Celery worker deploys it with its parity gate, SQL embeds with
it, every list of models shows it; refusals (a generative model, or a source of the other kind
than ``addmodel --kind`` asks for) leave nothing behind; removal is refused while an embedding
job or a generated column names the model. Cross-encoders, added as rerankers, are
test_rerankers.py's."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command
from django.test import Client

from console.deployments.models import Deployment
from console.jobs.models import EmbeddingJob
from console.roles import ADMIN, READER
from inference import catalog as model_catalog
from inference.store import ModelStore
from tests.console.stack import Stack, drop_database, scratch_database
from tests.fixtures.stmodels import make_cross_encoder, make_generative, make_st_model, st_encode

URI = "byom-bert:v1"
TEXTS = ["PostgreSQL stores vectors.", "Ein Satz auf Deutsch.", "向量搜索"]


def _client(name: str, role: str) -> Client:
    user = User.objects.create_user(name, password="pw-for-tests-only")
    user.groups.add(Group.objects.get(name=role))
    client = Client()
    client.force_login(user)
    return client


def _added_file(stack: Stack) -> Path:
    return stack.server.var_dir / "catalog" / "added.json"


def _add_from_the_page(admin: Client, folder: Path, uri: str = URI) -> Deployment:
    page = admin.post("/models/add/", {"action": "inspect", "source": str(folder)})
    assert page.status_code == 200
    text = page.content.decode()
    assert "Can be served" in text and f'value="{folder.name}:v1"' in text  # the proposed URI
    response = admin.post("/models/add/", {"action": "add", "source": str(folder), "uri": uri})
    assert response.status_code == 302, response.content.decode()[-2000:]
    deployment = Deployment.objects.get(model_uri=uri)
    assert response["Location"] == f"/deployments/{deployment.pk}/"
    return deployment


def test_a_model_added_on_the_models_page_deploys_and_serves_like_a_shipped_one(
    stack: Stack, tmp_path: Path
) -> None:
    folder = make_st_model(
        tmp_path / "my-bert", "bert", dense_out=16, prompts={"query": "query: "}, license="mit"
    )
    admin = _client("ada", ADMIN)
    assert "Add a model" in admin.get("/models/").content.decode()
    page = admin.post("/models/add/", {"action": "inspect", "source": str(folder)}).content
    for fact in ("Output dimensions", "32 → 16 (tanh)", "query: &quot;query: &quot;", "mit"):
        assert fact in page.decode()
    final = stack.wait(_add_from_the_page(admin, folder), timeout=240)
    assert final.state == "succeeded", final.error
    prepare = final.steps.get(name="prepare")
    assert any("parity gate passed" in line for line in prepare.log_lines)

    # SQL embeds with it, as sentence-transformers does.
    scratch_database(stack.server, "byom")
    try:
        with stack.server.connect("byom") as conn:
            conn.execute("CREATE EXTENSION azure_local_ai")
            rows = [
                conn.execute(
                    "SELECT azure_local_ai.create_embeddings(%s, %s)", [URI, text]
                ).fetchone()[0]
                for text in TEXTS
            ]
    finally:
        drop_database(stack.server, "byom")
    ours, theirs = np.asarray(rows, dtype=np.float32), st_encode(folder, TEXTS)
    cosines = np.sum(ours * theirs, axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
    )
    assert ours.shape == (3, 16) and cosines.min() >= 0.9999

    # Every list shows it: models page (with its parity), its page, search, the API, the
    # playground and the jobs form (both list deployed models).
    listing = admin.get("/models/").content.decode()
    assert URI in listing and "min cos 1.0000" in listing
    detail = admin.get(f"/models/{URI}/").content.decode()
    assert "Parity gate" in detail and "Remove model" in detail and str(folder) in detail
    assert URI in admin.get("/search/", {"q": "byom"}).content.decode()
    assert URI in {facts.uri for facts in stack.sidecar.client.model_facts()}  # /v1/models
    assert URI in admin.get("/playground/").content.decode()
    assert URI in admin.get("/jobs/new/").content.decode()


def test_a_refused_model_shows_why_and_leaves_nothing_behind(stack: Stack, tmp_path: Path) -> None:
    folder = make_generative(tmp_path / "causal-lm")
    admin = _client("ada", ADMIN)
    page = admin.post("/models/add/", {"action": "inspect", "source": str(folder)})
    text = page.content.decode()
    assert page.status_code == 200 and "Refused" in text
    assert "Qwen2ForCausalLM is a generative language model" in text
    assert "Add and deploy" not in text
    response = admin.post("/models/add/", {"action": "add", "source": str(folder), "uri": "x:v1"})
    assert response.status_code == 422
    assert "Nothing was added" in response.content.decode()
    assert (
        not _added_file(stack).exists() or not json.loads(_added_file(stack).read_text())["models"]
    )
    assert not Deployment.objects.exists()
    assert ModelStore(stack.models_dir).list() == []
    # A source that cannot be read at all, and a URI that is taken.
    missing = admin.post("/models/add/", {"action": "inspect", "source": "/no/such/folder"})
    assert "not a folder on this machine" in missing.content.decode()
    good = make_st_model(tmp_path / "good")
    taken = admin.post(
        "/models/add/",
        {"action": "add", "source": str(good), "uri": "all-MiniLM-L6-v2:v1"},
    )
    assert taken.status_code == 422 and "already has a model" in taken.content.decode()
    assert not Deployment.objects.exists()


def test_only_admins_may_add_or_remove_models(stack: Stack, tmp_path: Path) -> None:
    reader = _client("rita", READER)
    folder = make_st_model(tmp_path / "m")
    assert reader.get("/models/add/").status_code == 403
    assert reader.post("/models/add/", {"action": "add", "source": str(folder)}).status_code == 403
    assert reader.post(f"/models/{URI}/remove/").status_code == 403
    assert "Add a model" not in reader.get("/models/").content.decode()


def test_removal_is_refused_while_a_job_or_a_generated_column_names_the_model(
    stack: Stack, tmp_path: Path
) -> None:
    folder = make_st_model(tmp_path / "removable", "roberta")
    out = StringIO()
    call_command("addmodel", str(folder), "--name", URI, "--yes", "--wait", stdout=out)
    assert "Output dimensions" in out.getvalue() and f"{URI} is deployed" in out.getvalue()
    admin = _client("ada", ADMIN)

    job = EmbeddingJob.objects.create(
        database="postgres", schema_name="public", table_name="docs", key_column="id",
        key_type="bigint", text_columns=["body"], model_uri=URI, destination_column="v",
        dimensions=32,
    )  # fmt: skip
    refused = admin.post(f"/models/{URI}/remove/")
    assert refused.status_code == 409
    assert f"embedding job #{job.pk}" in refused.content.decode()
    job.delete()

    scratch_database(stack.server, "byom_gen")
    try:
        with stack.server.connect("byom_gen") as conn:
            conn.execute("CREATE EXTENSION vector")
            conn.execute("CREATE EXTENSION azure_local_ai")
            conn.execute(
                "CREATE TABLE notes (body text, v vector(32) GENERATED ALWAYS AS "
                f"(azure_local_ai.create_embeddings('{URI}', body)::vector) STORED)"
            )
        with pytest.raises(CommandError, match=r"generated column byom_gen: notes\.v calls it"):
            call_command("removemodel", URI)
        assert model_catalog.catalog().find(URI) is not None
    finally:
        drop_database(stack.server, "byom_gen")

    response = admin.post(f"/models/{URI}/remove/")
    assert response.status_code == 302
    assert f"{URI} was removed" in admin.get(response["Location"]).content.decode()
    assert model_catalog.catalog().find(URI) is None
    assert ModelStore(stack.models_dir).get(URI) is None
    assert URI not in {m["model_uri"] for m in stack.sidecar.client.models()}
    # A shipped model cannot be removed.
    with pytest.raises(CommandError, match="ships with the product"):
        call_command("removemodel", "all-MiniLM-L6-v2:v1")


def test_addmodel_refuses_clearly_and_adds_nothing(stack: Stack, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="cannot be served faithfully"):
        call_command("addmodel", str(make_generative(tmp_path / "lm")), "--yes", stdout=StringIO())
    with pytest.raises(CommandError, match="--yes"):
        call_command("addmodel", str(make_st_model(tmp_path / "ok")), stdout=StringIO())
    assert not Deployment.objects.exists()
    assert not _added_file(stack).exists()


def test_addmodel_kind_refuses_a_source_of_the_other_kind(stack: Stack, tmp_path: Path) -> None:
    """``--kind embedding`` refuses a cross-encoder, ``--kind reranker`` an embedding model,
    naming the kind each is; without ``--kind`` the cross-encoder is inspected as a reranker
    (test_rerankers.py adds and deploys one)."""
    cross_encoder = make_cross_encoder(tmp_path / "ce")
    out = StringIO()
    with pytest.raises(CommandError, match="is a cross-encoder \\(a reranker\\)"):
        call_command("addmodel", str(cross_encoder), "--kind", "embedding", "--yes", stdout=out)
    assert "Kind" in out.getvalue() and "reranker (cross-encoder" in out.getvalue()
    with pytest.raises(CommandError, match="is an embedding model"):
        call_command(
            "addmodel", str(make_st_model(tmp_path / "st")), "--kind", "reranker", "--yes",
            stdout=StringIO(),
        )  # fmt: skip
    # Without --kind it is accepted: it gets as far as asking (no --yes, no terminal).
    out = StringIO()
    with pytest.raises(CommandError, match="--yes"):
        call_command("addmodel", str(cross_encoder), stdout=out)
    assert "reranker (cross-encoder" in out.getvalue() and "cannot be served" not in out.getvalue()
    with pytest.raises(CommandError, match="invalid choice"):
        call_command("addmodel", str(cross_encoder), "--kind", "classifier", stdout=StringIO())
    assert not Deployment.objects.exists()
    assert not _added_file(stack).exists()
