"""The Jobs pages over the real parts: the managed server (pgvector, azure_local_ai), the
session's sidecar with ``tiny:v1``, a Celery worker where a job must run, and the console's
views. The server's objections reach the form through ``service.create`` itself."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from psycopg import sql

from console.jobs import objects, service
from console.jobs.models import EmbeddingJob
from tests.console.jobstack import Jobs
from tests.fixtures.sidecar import TINY_URI

HTMX_BODY = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "job-body"}
HTMX_TABLE = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "job-table"}


def _form(jobs: Jobs, **changes: str) -> dict[str, str]:
    data = {
        "database": jobs.database,
        "table": "public.docs",
        "key": "id",
        "columns": "title, body",
        "text_format": "{title}: {body}",
        "model": TINY_URI,
        "input_type": "none",
        "column": "embedding",
        "batch_size": "32",
        "workers": "1",
        "chunk_tokens": "256",
        "chunk_overlap": "0",
    }
    data.update(changes)
    return data


def _field(page: str, name: str) -> str:
    """The form field's block: its classes, label, input, help and errors."""
    found = re.search(rf'<div class="field[^"]*" id="field-{name}">.*?</div>', page, re.S)
    assert found, f"no field {name} in the page"
    return found.group(0)


def _columns(jobs: Jobs, table: str = "docs") -> set[str]:
    rows = jobs.sql(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
        " AND NOT attisdropped",
        [table],
    )
    return {name for (name,) in rows}


def test_an_admin_creates_a_job_with_the_form_and_the_pages_follow_it_to_the_end(
    jobs: Jobs,
    admin_client: Client,
) -> None:
    jobs.table("docs", 120)
    jobs.worker()
    form = admin_client.get("/jobs/new/").content.decode()
    assert f'<option value="{jobs.database}">{jobs.database}</option>' in form
    assert f'<option value="{TINY_URI}"' in form
    assert 'value="embedding"' in form  # the destination's default
    assert 'href="/jobs/" aria-current="page" class="active">Jobs</a>' in form

    response = admin_client.post("/jobs/new/", _form(jobs))
    job = EmbeddingJob.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.pk}/"
    assert job.text_columns == ["title", "body"] and job.batch_size == 32
    assert job.created_by_name == "ada" and not job.chunking and not job.build_index
    page = admin_client.get(response["Location"]).content.decode()
    assert f"Job #{job.pk} created: 120 rows of public.docs queued" in page
    assert "public.docs &rarr; embedding" in page

    jobs.wait_synced(job)

    def backfilled() -> bool:
        job.refresh_from_db()
        return job.backfill_done_at is not None

    jobs.wait("the backfill noted as done", backfilled)
    body = admin_client.get(f"/jobs/{job.pk}/", **HTMX_BODY).content.decode()
    assert "<html" not in body and 'data-live="0"' in body
    assert 'hx-trigger="every' not in body  # idle: the fragment stops polling
    assert 'id="job-done" data-value="120"' in body and 'id="job-total" data-value="120"' in body
    assert 'aria-valuenow="100"' in body and "In sync" in body
    assert "Finished <time" in body and ">just now</time>: 120 rows" in body
    table = admin_client.get("/jobs/", **HTMX_TABLE).content.decode()
    assert "120 / 120 (100%)" in table and "every 2s" not in table

    # The bell tells of the finished backfill, and leads to the job.
    shell = admin_client.get("/jobs/").content.decode()
    assert "Backfill finished: public.docs → embedding, 120 rows" in shell
    assert f'href="/jobs/{job.pk}/"' in shell

    # New rows: the page counts them, and polls until they are embedded.
    jobs.sql("INSERT INTO docs (id, title, body) VALUES (121, 'new', 'a new row')")
    jobs.wait_synced(job)
    body = admin_client.get(f"/jobs/{job.pk}/", **HTMX_BODY).content.decode()
    assert 'id="job-done" data-value="121"' in body


def test_the_servers_objections_are_shown_next_to_the_field_keeping_what_was_typed(
    jobs: Jobs,
    admin_client: Client,
) -> None:
    jobs.table("docs", 5)
    jobs.sql("CREATE TABLE notes (id integer, body text)")  # no key that names one row
    cases = [
        ({"table": "public.nope"}, "table", "there is no table public.nope"),
        ({"columns": "title, bdy", "text_format": ""}, "columns", "docs has no column bdy"),
        ({"key": "uid"}, "key", "public.docs has no column uid"),
        ({"table": "notes", "columns": "body", "text_format": ""}, "key", "id is not the primary"),
        ({"text_format": "{title}: {summary}"}, "text_format", "it names summary"),
        ({"text_format": "{title!r}"}, "text_format", "may only name columns"),
        ({"column": "views"}, "column", "public.docs.views is integer; the model gives vector(32)"),
        ({"column": "title"}, "column", "cannot be the key or a text column"),
        ({"columns": " , "}, "columns", "Name at least one text column."),
        ({"batch_size": "0"}, "batch_size", "greater than or equal to 1"),
        ({"model": "nope:v1"}, "model", "nope:v1 is not deployed (any more)"),
        ({"chunking": "on", "chunk_tokens": ""}, "chunk_tokens", "Give the chunk size in tokens."),
    ]
    for changes, field, message in cases:
        response = admin_client.post("/jobs/new/", _form(jobs, **changes))
        page = response.content.decode()
        assert response.status_code == 422, (changes, page)
        assert "The job was not created." in page
        block = _field(page, field)
        assert message in block and "has-error" in block, (changes, field, page)
        for name, typed in changes.items():  # what was typed is kept
            if name not in ("chunking", "model") and typed.strip():
                assert f'value="{typed}"' in _field(page, name).replace("&#x27;", "'")
    assert not EmbeddingJob.objects.exists()
    assert "embedding" not in _columns(jobs)  # nothing half-created

    # A job already filling the column: the form says which, and makes no second one.
    first = jobs.create()
    response = admin_client.post("/jobs/new/", _form(jobs))
    assert response.status_code == 422
    assert f"job #{first.pk} already fills public.docs.embedding" in _field(
        response.content.decode(), "column"
    )
    assert EmbeddingJob.objects.count() == 1


def test_readers_see_every_page_without_write_buttons_and_every_write_is_refused(
    jobs: Jobs,
    reader_client: Client,
    admin_client: Client,
) -> None:
    jobs.table("docs", 10)
    job = jobs.create()  # no worker: its 10 rows stay pending
    EmbeddingJob.objects.filter(pk=job.pk).update(
        last_error="the inference sidecar does not answer", last_error_at=timezone.now()
    )

    listing = reader_client.get("/jobs/").content.decode()
    assert "public.docs" in listing and "0 / 10 (0%)" in listing
    assert "New job" not in listing and "only admins can create" in listing
    assert "every 2s" in listing  # the job has work: the table polls
    detail = reader_client.get(f"/jobs/{job.pk}/").content.decode()
    assert "Batches are waiting." in detail and "the inference sidecar does not answer" in detail
    assert 'data-live="1"' in detail and 'hx-trigger="every 1s"' in detail
    for button in ("cmd-pause", "cmd-delete", "retry-failed"):
        assert button not in detail
    create = reader_client.get("/jobs/new/")
    assert create.status_code == 200
    assert "only admins can create embedding jobs" in create.content.decode()
    assert '<fieldset class="form-sections" disabled>' in create.content.decode()
    admin_detail = admin_client.get(f"/jobs/{job.pk}/").content.decode()
    assert "cmd-pause" in admin_detail and "cmd-delete" in admin_detail

    writes = [
        ("post", "/jobs/new/", _form(jobs, table="docs", column="other")),
        ("post", f"/jobs/{job.pk}/pause/", {}),
        ("post", f"/jobs/{job.pk}/resume/", {}),
        ("post", f"/jobs/{job.pk}/retry/", {}),
        ("post", f"/jobs/{job.pk}/delete/", {"drop_column": "on"}),
        ("get", f"/jobs/{job.pk}/delete/", {}),
        ("post", f"/jobs/{job.pk}/model/", {"model_uri": TINY_URI}),
        ("post", f"/jobs/{job.pk}/recount/", {}),
    ]
    for method, url, data in writes:
        response = getattr(reader_client, method)(url, data)
        assert response.status_code == 403, url
        assert "Only admins may create, pause, resume, retry, recount or delete" in (
            response.content.decode()
        )
    job.refresh_from_db()
    assert job.state == EmbeddingJob.State.ACTIVE and EmbeddingJob.objects.count() == 1
    assert "embedding" in _columns(jobs)


def test_every_write_needs_the_csrf_token(
    jobs: Jobs,
    admin_client: Client,
) -> None:
    jobs.table("docs", 3)
    job = jobs.create()
    guarded = Client(enforce_csrf_checks=True)
    guarded.force_login(User.objects.get(username="ada"))
    for url in ("new/", f"{job.pk}/pause/", f"{job.pk}/resume/", f"{job.pk}/retry/",
                f"{job.pk}/model/", f"{job.pk}/recount/"):  # fmt: skip
        assert guarded.post(f"/jobs/{url}", _form(jobs)).status_code == 403, url
    assert guarded.post(f"/jobs/{job.pk}/delete/").status_code == 403
    job.refresh_from_db()
    assert job.state == EmbeddingJob.State.ACTIVE
    page = guarded.get(f"/jobs/{job.pk}/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token
    response = guarded.post(f"/jobs/{job.pk}/pause/", {"csrfmiddlewaretoken": token.group(1)})
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.state == EmbeddingJob.State.PAUSED


def test_failed_rows_pause_resume_retry_and_delete_from_the_pages(
    jobs: Jobs,
    admin_client: Client,
) -> None:
    jobs.table("docs", 20, body=lambda i: "" if i == 7 else f"body {i}")
    jobs.worker()
    # One column, no format: an empty body is an empty text, which the model refuses.
    job = jobs.create(columns=["body"], text_format="", max_attempts=1)
    jobs.wait_synced(job)
    detail = admin_client.get(f"/jobs/{job.pk}/").content.decode()
    assert "Failed rows (1)" in detail and "<td><code>7</code></td>" in detail
    assert "22023" in detail and 'id="retry-failed"' in detail
    assert ">In sync, 1 failed</span>" in detail

    response = admin_client.post(f"/jobs/{job.pk}/retry/")
    assert response.status_code == 302
    assert "1 failed row queued again." in admin_client.get(response["Location"]).content.decode()
    jobs.wait_synced(job)
    assert service.progress(job).failed == 1  # still empty: refused again

    assert admin_client.post(f"/jobs/{job.pk}/pause/").status_code == 302
    job.refresh_from_db()
    assert job.state == EmbeddingJob.State.PAUSED
    body = admin_client.get(f"/jobs/{job.pk}/", **HTMX_BODY).content.decode()
    assert 'data-live="0"' in body and "Paused" in body and "hx-trigger" not in body
    page = admin_client.get(f"/jobs/{job.pk}/").content.decode()
    assert "cmd-resume" in page and "cmd-pause" not in page
    assert admin_client.post(f"/jobs/{job.pk}/resume/").status_code == 302
    job.refresh_from_db()
    assert job.state == EmbeddingJob.State.ACTIVE

    dialog = admin_client.get(f"/jobs/{job.pk}/delete/", HTTP_HX_REQUEST="true")
    assert dialog.status_code == 200 and "<dialog" in dialog.content.decode()
    assert "Also drop the vector column" in dialog.content.decode()
    assert "<dialog" not in admin_client.get(f"/jobs/{job.pk}/delete/").content.decode()
    response = admin_client.post(f"/jobs/{job.pk}/delete/", {"drop_column": "on"})
    assert response.status_code == 302 and response["Location"] == "/jobs/"
    job.refresh_from_db()
    assert job.state == EmbeddingJob.State.DELETED
    assert "embedding" not in _columns(jobs)
    listing = admin_client.get("/jobs/").content.decode()
    assert f"Job #{job.pk} deleted" in listing and f'data-job="{job.pk}"' not in listing
    assert "Show deleted jobs (1)" in listing
    assert f'data-job="{job.pk}"' in admin_client.get("/jobs/?deleted=1").content.decode()
    # A deleted job is history: acting on it says why not.
    refused = admin_client.post(f"/jobs/{job.pk}/pause/")
    assert refused.status_code == 409 and f"job #{job.pk} is deleted" in refused.content.decode()


def test_the_bell_and_the_search_know_the_jobs(
    jobs: Jobs,
    admin_client: Client,
) -> None:
    jobs.table("docs", 4)
    jobs.table("notes", 4)
    running = jobs.create()  # no worker: backfilling
    finished = jobs.create(table="notes")
    EmbeddingJob.objects.filter(pk=finished.pk).update(backfill_done_at=timezone.now())
    page = admin_client.get("/jobs/").content.decode()
    assert 'aria-label="Notifications: 2, 1 running"' in page
    assert "Backfilling public.docs → embedding" in page
    assert "0 of 4 rows embedded with tiny:v1" in page
    assert "Backfill finished: public.docs → embedding" not in page
    assert "Backfill finished: public.notes → embedding, 4 rows" in page
    # A day later the finished backfill is no news.
    EmbeddingJob.objects.filter(pk=finished.pk).update(
        backfill_done_at=timezone.now() - timedelta(days=2)
    )
    assert "Backfill finished" not in admin_client.get("/jobs/").content.decode()
    # A model change embeds every row again: the bell and the job's page say with which model.
    EmbeddingJob.objects.filter(pk=running.pk).update(next_model_uri="other-model:v1")
    page = admin_client.get(f"/jobs/{running.pk}/").content.decode()
    assert "Re-embedding public.docs → embedding with other-model:v1" in page
    assert "Re-embedding with <code>other-model:v1</code>" in page

    def search(query: str) -> str:
        return admin_client.get("/search/", {"q": query}, HTTP_HX_REQUEST="true").content.decode()

    assert 'href="/jobs/"' in search("jobs")
    assert 'href="/jobs/"' in search("embedding")
    assert f'href="/jobs/{running.pk}/"' in search("docs")
    assert f'href="/jobs/{finished.pk}/"' in search(f"#{finished.pk}")


def test_the_pages_say_what_cannot_be_reached(
    admin_client: Client, settings: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANAGED_DATABASE_URL", "postgresql://postgres@127.0.0.1:9/postgres")
    settings.INFERENCE_URL = "http://127.0.0.1:9"  # type: ignore[attr-defined]
    form = admin_client.get("/jobs/new/").content.decode()
    assert "The managed server's databases cannot be listed" in form
    assert "The inference sidecar cannot be reached" in form
    job = EmbeddingJob.objects.create(
        database="docs",
        schema_name="public",
        table_name="docs",
        key_column="id",
        key_type="bigint",
        text_columns=["body"],
        model_uri=TINY_URI,
        destination_column="embedding",
        dimensions=32,
    )
    listing = admin_client.get("/jobs/").content.decode()
    assert "unknown: the job's database cannot be read" in listing
    detail = admin_client.get(f"/jobs/{job.pk}/").content.decode()
    assert "The job's progress cannot be counted now." in detail
    assert "Cannot connect to the managed server" in detail


def test_an_admin_changes_the_model_from_the_page(
    jobs: Jobs, admin_client: Client, cls_model: str
) -> None:
    jobs.table("docs", 20)
    jobs.worker()
    job = jobs.create()
    jobs.wait_synced(job)
    page = admin_client.get(f"/jobs/{job.pk}/").content.decode()
    assert 'id="change-model"' in page and f'<option value="{cls_model}">' in page
    assert f'<option value="{TINY_URI}">' not in page.split('id="change-model"')[1]

    refused = admin_client.post(f"/jobs/{job.pk}/model/", {"model_uri": "nope:v1"})
    assert refused.status_code == 409 and "nope:v1" in refused.content.decode()
    job.refresh_from_db()
    assert not job.next_model_uri

    response = admin_client.post(f"/jobs/{job.pk}/model/", {"model_uri": cls_model})
    assert response.status_code == 302
    page = admin_client.get(response["Location"]).content.decode()
    assert f"Embedding 20 rows again with {cls_model}" in page
    assert 'id="change-model"' not in page  # one change at a time

    def changed() -> bool:
        job.refresh_from_db()
        return job.model_uri == cls_model and not job.next_model_uri

    jobs.wait("the model changed", changed)
    body = admin_client.get(f"/jobs/{job.pk}/", **HTMX_BODY).content.decode()
    assert f"rows embedded with <code>{cls_model}</code>" in body


def test_a_job_being_created_is_shown_as_such_and_offers_no_commands(
    admin_client: Client,
) -> None:
    job = EmbeddingJob.objects.create(
        database="docs",
        schema_name="public",
        table_name="docs",
        key_column="id",
        key_type="bigint",
        text_columns=["body"],
        model_uri=TINY_URI,
        destination_column="embedding",
        dimensions=32,
        state=EmbeddingJob.State.CREATING,
    )
    listing = admin_client.get("/jobs/").content.decode()
    assert '<span class="state warn">Creating</span>' in listing
    assert "cannot be read" not in listing and "every 2s" not in listing
    detail = admin_client.get(f"/jobs/{job.pk}/").content.decode()
    assert "Being created:" in detail and "Counted once the job is created." in detail
    for button in ("cmd-pause", "cmd-resume", "cmd-delete", "change-model"):
        assert button not in detail
    EmbeddingJob.objects.filter(pk=job.pk).update(
        created_at=timezone.now() - service.INTERRUPTED_AFTER - timedelta(seconds=1)
    )
    listing = admin_client.get("/jobs/").content.decode()
    assert '<span class="state bad">Creation interrupted</span>' in listing


def _scans(jobs: Jobs) -> int:
    """Sequential and index scans of public.docs so far, once the server has them all."""

    def read() -> int:
        row = jobs.sql(
            "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables"
            " WHERE relid = 'public.docs'::regclass"
        )
        return int(row[0][0])

    last = read()
    while True:  # a closed session's statistics reach the server shortly after
        time.sleep(0.7)
        now = read()
        if now == last:
            return now
        last = now


def test_the_polls_never_read_the_table_and_recount_corrects_its_count(
    jobs: Jobs,
    admin_client: Client,
    reader_client: Client,
) -> None:
    jobs.table("docs", 12)
    job = jobs.create()  # no worker: the job has work, so its pages poll
    before = _scans(jobs)
    for _ in range(3):
        assert admin_client.get("/jobs/", **HTMX_TABLE).status_code == 200
        assert admin_client.get(f"/jobs/{job.pk}/", **HTMX_BODY).status_code == 200
        assert admin_client.get(f"/jobs/{job.pk}/").status_code == 200
    assert _scans(jobs) == before
    jobs.sql("SELECT count(*) FROM docs")  # and a query of the table would show
    assert _scans(jobs) == before + 1

    detail = admin_client.get(f"/jobs/{job.pk}/", **HTMX_BODY).content.decode()
    assert 'id="job-total" data-value="12"' in detail
    assert "last counted row by row" in detail and 'id="recount"' in detail
    n = objects.Names(job.pk)
    jobs.sql(sql.SQL("UPDATE {} SET rows = 40 WHERE id = 0").format(n.counts).as_string())
    assert "28 / 40 (70%)" in admin_client.get("/jobs/").content.decode()  # 12 pending
    assert reader_client.post(f"/jobs/{job.pk}/recount/").status_code == 403
    assert 'id="recount"' not in reader_client.get(f"/jobs/{job.pk}/").content.decode()
    response = admin_client.post(f"/jobs/{job.pk}/recount/")
    assert response.status_code == 302
    page = admin_client.get(response["Location"]).content.decode()
    assert "Recounted public.docs: 12 rows; the job&#x27;s counts said 40 and now say 12." in page
    assert 'id="job-total" data-value="12"' in page
    assert "last counted row by row <time" in page and "just now</time>" in page
