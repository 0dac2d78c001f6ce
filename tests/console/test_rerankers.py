"""Rerankers in the console, all real: a generated cross-encoder is added on the Models page,
the Celery worker deploys it through its export and rerank parity gate, SQL's rank() scores
with it as CrossEncoder.predict does (in a database that had the extension's 1.0.0, which the
deployment updated), every list of models shows its kind, the job form and the jobs service
turn it away, the settings form offers it as default_rerank_model, and removal waits until
that setting names another reranker or none."""

from __future__ import annotations

from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command
from django.test import Client

from console.deployments.models import Deployment
from console.inference_settings.models import SettingChange
from console.roles import ADMIN
from inference import catalog as model_catalog
from inference.store import ModelStore
from tests.console.stack import Stack, drop_database, scratch_database
from tests.fixtures.pg import allow_extensions
from tests.fixtures.rerankers import reference_scores
from tests.fixtures.stmodels import make_cross_encoder, sharpen

URI = "byom-reranker:v1"
OLD_DB = "rerank_old_ext"
SETTING = "default_rerank_model"
QUERY = "Where does PostgreSQL keep embeddings?"
DOCUMENTS = ["PostgreSQL stores each vector beside its row.", "Der schnelle braune Fuchs."]


def _client(name: str, role: str) -> Client:
    user = User.objects.create_user(name, password="pw-for-tests-only")
    user.groups.add(Group.objects.get(name=role))
    client = Client()
    client.force_login(user)
    return client


def _row(page: str, marker: str) -> str:
    """The HTML of the table row holding ``marker`` (a data- attribute)."""
    start = page.rindex("<tr", 0, page.index(marker))
    return page[start : page.index("</tr>", start)]


def _facts(page: str) -> list[str]:
    """The labels of the "What was found" list, in order."""
    facts = page.split('id="facts"', 1)[1].split("</dl>", 1)[0]
    return [part.split("</dt>", 1)[0] for part in facts.split("<dt>")[1:]]


def _settings_form(stack: Stack, **changes: str) -> dict[str, str]:
    """The settings form as the page shows it now, with ``changes`` chosen."""
    data: dict[str, str] = {}
    values = stack.sidecar.client.settings()
    for entry in stack.sidecar.client.settings_schema():
        key = entry["key"]
        shown = values[key]
        data[f"initial-{key}"] = str(shown)
        new = changes.get(key, shown)
        if entry["type"] == "bool":
            if new:
                data[key] = "on"
        else:
            data[key] = str(new)
    return data


def _rank(stack: Stack, *, model: str | None = URI) -> list[tuple[str, int, float]]:
    with stack.server.connect(OLD_DB) as conn:
        if model is None:
            rows = conn.execute(
                "SELECT * FROM azure_local_ai.rank(%s, %s)", [QUERY, DOCUMENTS]
            ).fetchall()
        else:
            rows = conn.execute(
                "SELECT * FROM azure_local_ai.rank(%s, %s, model => %s)", [QUERY, DOCUMENTS, model]
            ).fetchall()
    return [(str(r[0]), int(r[1]), float(r[2])) for r in rows]


@pytest.fixture
def old_extension(stack: Stack) -> Iterator[str]:
    """A database with azure_local_ai 1.0.0 (no rank()), as a server had before 1.1.0."""
    with stack.server.connect() as conn:
        allow_extensions(conn, "azure_local_ai")
    scratch_database(stack.server, OLD_DB)
    with stack.server.connect(OLD_DB) as conn:
        conn.execute("CREATE EXTENSION azure_local_ai VERSION '1.0.0'")
        (found,) = conn.execute(
            "SELECT count(*) FROM pg_proc WHERE proname = 'rank' "
            "AND pronamespace = 'azure_local_ai'::regnamespace"
        ).fetchone()
        assert found == 0
    try:
        yield OLD_DB
    finally:
        stack.sidecar.client.update_settings({SETTING: ""})
        drop_database(stack.server, OLD_DB)


def test_a_cross_encoder_added_on_the_models_page_serves_as_a_reranker(
    stack: Stack, old_extension: str, tmp_path: Path
) -> None:
    folder = make_cross_encoder(tmp_path / "my-cross-encoder")
    sharpen(folder)  # scores that depend on the text
    admin = _client("ada", ADMIN)

    # Inspected: a reranker, its kind first, its own facts, fp32 only.
    page = admin.post("/models/add/", {"action": "inspect", "source": str(folder)})
    text = page.content.decode()
    assert page.status_code == 200 and "Can be served" in text
    assert 'class="kind-badge reranker">Reranker</span>' in text
    facts = _facts(text)
    assert facts[0] == "Kind" and "Score" in facts and "Max tokens" in facts
    assert not {"Output dimensions", "Pooling", "Prompts"} & set(facts)
    assert "reranker (cross-encoder: scores query-document pairs)" in text
    assert "Add and deploy" in text and "CrossEncoder.predict" in text
    # int8 is offered, with the rerank gate named.
    assert '<option value="fp32"' in text and '<option value="int8"' in text
    assert "rank the probe queries' documents as fp32 does" in text

    response = admin.post("/models/add/", {"action": "add", "source": str(folder), "uri": URI})
    assert response.status_code == 302, response.content.decode()[-2000:]
    final = stack.wait(Deployment.objects.get(model_uri=URI), timeout=240)
    assert final.state == "succeeded", final.error
    steps = {step.name: step for step in final.steps.all()}
    assert any("rerank parity gate passed" in line for line in steps["prepare"].log_lines)
    assert steps["warmup"].message.startswith("probe ranking: 2 documents scored")
    # The deployment brought the database's 1.0.0 up to date.
    assert f"azure_local_ai updated in {OLD_DB} (1.0.0 → 1.1.0)" in steps["ready"].message
    detail = admin.get(f"/deployments/{final.pk}/").content.decode()
    assert "azure_local_ai.rank(" in detail and "(reranker)" in detail

    # SQL ranks with it as CrossEncoder.predict scores, best first, in the updated database.
    with stack.server.connect(OLD_DB) as conn:
        (version,) = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'azure_local_ai'"
        ).fetchone()
    assert version == "1.1.0"
    ranked = _rank(stack)
    assert len(ranked) == 2 and [r[1] for r in ranked] == [1, 2]
    theirs = reference_scores(folder, QUERY, DOCUMENTS)
    ours = np.zeros(2, dtype=np.float32)
    for document_id, _, score in ranked:
        ours[int(document_id) - 1] = score
    assert np.abs(ours - theirs).max() < 1e-4
    assert ranked[0][2] >= ranked[1][2]

    # Every list shows its kind: the Models page, its page, search, the Overview.
    listing = admin.get("/models/").content.decode()
    row = _row(listing, f'data-model="{URI}"')
    assert 'class="kind-badge reranker"' in row and ">Reranker</span>" in row
    assert "scores pairs" in row and "per pair" in row and "max diff " in row
    assert "None" not in row
    shipped = _row(listing, 'data-model="all-MiniLM-L6-v2:v1"')
    assert ">Embedding</span>" in shipped and "<td>384</td>" in shipped
    model_page = admin.get(f"/models/{URI}/").content.decode()
    assert 'id="model-kind"' in model_page and ">Reranker</span>" in model_page
    for label in ("Largest score difference", "Largest logit difference", "Same order"):
        assert label in model_page
    assert "probe (query, document) pairs" in model_page and "Lowest cosine" not in model_page
    for absent in ("<dt>Dimensions</dt>", "<dt>Pooling</dt>", "<dt>Prefixes</dt>"):
        assert absent not in model_page
    assert "per pair, the query and the document together" in model_page
    assert '<option value="int8"' in model_page  # int8 has its own rankings gate
    # Deployed again at int8: the rankings gate runs and the page shows its figures, whichever
    # way a random model's verdict goes.
    again = admin.post(f"/models/{URI}/deploy/", {"source": "", "precision": "int8"})
    assert again.status_code == 302, again.content.decode()[-2000:]
    int8_run = stack.wait(Deployment.objects.filter(model_uri=URI).latest("pk"), timeout=240)
    assert int8_run.state == "succeeded", int8_run.error
    prepare = next(step for step in int8_run.steps.all() if step.name == "prepare")
    assert any("int8 rerank quality gate" in line for line in prepare.log_lines)
    model_page = admin.get(f"/models/{URI}/").content.decode()
    for label in ("int8 quality gate", "Rankings (int8 vs fp32)", "Top-3 agreement"):
        assert label in model_page
    assert "Mean cosine (int8 vs fp32)" not in model_page
    found = admin.get("/search/", {"q": "reranker"}, HTTP_HX_REQUEST="true").content.decode()
    assert f"/models/{URI}/" in found and "Reranker, " in found
    overview = admin.get("/").content.decode()
    assert f'<code>{URI}</code> <span class="kind-badge reranker">Reranker</span>' in overview

    # Embedding jobs turn it away: the form does not offer it, and naming it is refused.
    form = admin.get("/jobs/new/").content.decode()
    assert 'name="model"' in form and f'<option value="{URI}"' not in form
    posted = admin.post(
        "/jobs/new/",
        {"database": OLD_DB, "table": "docs", "key": "id", "columns": "body", "model": URI,
         "input_type": "none", "column": "v", "batch_size": 64, "workers": 1},
    )  # fmt: skip
    assert posted.status_code == 422
    assert f"{URI} is a reranker: it scores query-document pairs" in posted.content.decode()
    with pytest.raises(CommandError, match=rf"{URI} is a reranker model .*embedding model"):
        call_command(
            "embedjob", "create", "--database", OLD_DB, "--table", "docs", "--key", "id",
            "--columns", "body", "--model", URI, "--column", "v", stdout=StringIO(),
        )  # fmt: skip

    # The settings form offers it for default_rerank_model; chosen, rank() needs no model.
    settings_page = admin.get("/settings/").content.decode()
    setting_row = _row(settings_page, f'data-setting="{SETTING}"')
    assert f'<option value="{URI}">{URI}</option>' in setting_row
    saved = admin.post("/settings/", _settings_form(stack, **{SETTING: URI}))
    assert saved.status_code == 200, saved.content.decode()[-3000:]
    assert stack.sidecar.client.settings()[SETTING] == URI
    assert SettingChange.objects.get(key=SETTING).new_value == URI
    assert [r[:2] for r in _rank(stack, model=None)] == [r[:2] for r in ranked]

    # Removal waits while the setting names it, and says so.
    blocked = admin.post(f"/models/{URI}/remove/")
    assert blocked.status_code == 409
    message = blocked.content.decode()
    assert "Nothing was removed" in message and f"setting {SETTING} names it" in message
    with pytest.raises(CommandError, match=f"setting {SETTING} names it"):
        call_command("removemodel", URI)
    assert model_catalog.catalog().find(URI) is not None
    assert stack.sidecar.client.settings()[SETTING] == URI  # removal does not change it

    cleared = admin.post("/settings/", _settings_form(stack, **{SETTING: ""}))
    assert cleared.status_code == 200 and stack.sidecar.client.settings()[SETTING] == ""
    removed = admin.post(f"/models/{URI}/remove/")
    assert removed.status_code == 302
    assert f"{URI} was removed" in admin.get(removed["Location"]).content.decode()
    assert model_catalog.catalog().find(URI) is None
    assert ModelStore(stack.models_dir).get(URI) is None
    assert URI not in {m["model_uri"] for m in stack.sidecar.client.models()}
