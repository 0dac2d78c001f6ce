"""The Jobs page: embedding jobs listed with their progress, created from a form, watched live
on their own page (an htmx fragment that polls itself while the job has work), paused,
resumed, retried and deleted. Everything a job does goes through ``service``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

import psycopg
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from console.databases import managed_databases
from console.jobs import service
from console.jobs.forms import JobForm
from console.jobs.models import EmbeddingJob, WorkerRefusal
from console.playground.embedding import deployed_models
from console.roles import can_manage_jobs
from serverparams.server import ServerError

LIST_ROWS = 100
FAILURES_SHOWN = 20
NOT_ALLOWED = "Only admins may create, pause, resume, retry, recount or delete embedding jobs."

View = Callable[..., HttpResponse]


def _managers_only(view: View) -> View:
    @wraps(view)
    def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not can_manage_jobs(request.user):
            raise PermissionDenied(NOT_ALLOWED)
        return view(request, *args, **kwargs)

    return checked


def _duration(seconds: float) -> str:
    """12 s, 4 min 05 s, 2 h 10 min."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


@dataclass(frozen=True)
class Watch:
    """A job with its progress, as the pages show it."""

    job: EmbeddingJob
    progress: service.Progress | None  # None: deleted, or unknown (``problem`` says why)
    problem: str = ""

    @property
    def backfilling(self) -> bool:
        return self.job.backfill_done_at is None

    @property
    def reembedding(self) -> str:
        return (self.progress.reembedding if self.progress else "") or self.job.next_model_uri

    @property
    def index_pending(self) -> bool:
        return self.job.build_index and self.job.index_built_at is None

    @property
    def live(self) -> bool:
        """Whether the page should keep polling: the job is active and has work, or cannot
        be counted now. An idle, paused or deleted job's page stops."""
        if self.job.state != EmbeddingJob.State.ACTIVE:
            return False
        if self.progress is None:
            return True
        return bool(
            self.progress.pending or self.backfilling or self.reembedding or self.index_pending
        )

    @property
    def status(self) -> tuple[str, str]:
        """A label and its colour (the ``state`` classes)."""
        job, progress = self.job, self.progress
        if job.state == EmbeddingJob.State.DELETED:
            return "Deleted", "neutral"
        if job.state == EmbeddingJob.State.PAUSED:
            return "Paused", "neutral"
        if job.state == EmbeddingJob.State.CREATING:
            if job.created_at < timezone.now() - service.INTERRUPTED_AFTER:
                return "Creation interrupted", "bad"  # undone by the next creation, or worker
            return "Creating", "warn"
        if progress is None:
            return "Unknown", "bad"
        if job.last_error and progress.pending:
            return "Waiting", "bad"
        if self.backfilling:
            return "Backfilling", "warn"
        if self.reembedding:
            return "Re-embedding", "warn"
        if progress.pending:
            return "Catching up", "warn"
        if self.index_pending:
            return "Building index", "warn"
        if progress.failed:
            return f"In sync, {progress.failed:,} failed", "warn"
        return "In sync", "ok"

    @property
    def status_label(self) -> str:
        return self.status[0]

    @property
    def status_class(self) -> str:
        return self.status[1]

    @property
    def rate(self) -> str:
        if self.progress is None or not self.progress.rows_per_s:
            return "-"
        return f"{self.progress.rows_per_s:,.1f}"

    @property
    def eta(self) -> str:
        if self.progress is None:
            return "-"
        if self.job.state == EmbeddingJob.State.PAUSED:
            return "paused"
        if not self.progress.pending:
            return "done"
        eta = self.progress.eta_s
        if eta is None:  # nothing embedded in the last minute
            return "waiting" if self.job.last_error else "estimating"
        return _duration(eta)


def _watch(job: EmbeddingJob, *, chunks: bool = True) -> Watch:
    """The job with its figures: from the job's own tables, never a scan of the user's table
    (``chunks``: also count its chunk table, for the job's page)."""
    if job.state in (EmbeddingJob.State.DELETED, EmbeddingJob.State.CREATING):
        return Watch(job, None)  # its tables are gone, or not there yet: nothing to count
    try:
        return Watch(job, service.progress(job, chunks=chunks))
    except service.JobError as exc:
        return Watch(job, None, str(exc))


# -- list ---------------------------------------------------------------------------------------


@require_GET
def job_list(request: HttpRequest) -> HttpResponse:
    show_deleted = request.GET.get("deleted") == "1"
    # Whether any worker refuses a job's batches, in the same query as the jobs.
    jobs = EmbeddingJob.objects.annotate(
        refused=Exists(WorkerRefusal.objects.filter(job=OuterRef("pk")))
    )
    if not show_deleted:
        jobs = jobs.exclude(state=EmbeddingJob.State.DELETED)
    watches = [_watch(job, chunks=False) for job in jobs[:LIST_ROWS]]
    context = {
        "watches": watches,
        "polling": any(watch.live for watch in watches),
        "show_deleted": show_deleted,
        "deleted_count": EmbeddingJob.objects.filter(state=EmbeddingJob.State.DELETED).count(),
        "can_manage": can_manage_jobs(request.user),
    }
    if request.htmx and request.htmx.target == "job-table":
        return render(request, "jobs/_list_table.html", context)
    return render(request, "jobs/list.html", context)


# -- create -------------------------------------------------------------------------------------


def _databases() -> tuple[list[str], str]:
    """The managed server's databases a job may use, or why they are unknown."""
    try:
        return managed_databases(), ""
    except (ServerError, psycopg.Error) as exc:
        return [], str(exc).strip()


@require_http_methods(["GET", "POST"])
def job_create(request: HttpRequest) -> HttpResponse:
    creating = request.method == "POST"
    can_manage = can_manage_jobs(request.user)
    if creating and not can_manage:
        raise PermissionDenied(NOT_ALLOWED)
    databases, database_problem = _databases()
    deployed = deployed_models()
    # A job stores vectors: rerankers, which score pairs and give none, are not offered.
    embedders = [m for m in deployed.models if not m.is_reranker]
    form = JobForm(
        request.POST if creating else None,
        initial={"database": request.GET.get("database", "")},
        databases=databases,
        models=deployed.models,
    )
    status = 200
    if creating:
        status = 422
        if form.is_valid():
            try:
                job = service.create(**form.create_arguments(), user=request.user)
            except service.JobError as exc:
                form.add_job_error(exc)
            except psycopg.Error as exc:
                form.job_error = f"the managed server failed while checking the table: {exc}"
            else:
                messages.success(
                    request,
                    f"Job #{job.pk} created: {job.backfill_rows:,} rows of "
                    f"{job.qualified_table} queued for embedding.",
                )
                return redirect("jobs:detail", pk=job.pk)
    context = {
        "form": form,
        "database_problem": database_problem,
        "deployed": deployed,
        "embedders": embedders,
        "rerankers_only": bool(deployed.models) and not embedders,
        "can_manage": can_manage,
    }
    return render(request, "jobs/create.html", context, status=status)


# -- detail and actions -------------------------------------------------------------------------


def _detail_context(request: HttpRequest, job: EmbeddingJob, **extra: Any) -> dict[str, Any]:
    watch = _watch(job)
    failures: list[tuple[Any, str, int]] = []
    failures_problem = ""
    if watch.progress is not None and watch.progress.failed:
        try:
            failures = service.failures(job, FAILURES_SHOWN)
        except service.JobError as exc:
            failures_problem = str(exc)
    can_manage = can_manage_jobs(request.user)
    other_models: list[str] = []
    if (
        can_manage
        and job.state not in (EmbeddingJob.State.DELETED, EmbeddingJob.State.CREATING)
        and not job.next_model_uri
    ):
        other_models = [
            m.uri
            for m in deployed_models().models
            if m.uri != job.model_uri and not m.is_reranker  # rerankers give no vectors
        ]
    return {
        "job": job,
        "watch": watch,
        "failures": failures,
        "failures_problem": failures_problem,
        "can_manage": can_manage,
        "other_models": other_models,
        "refusals": list(job.refusals.all()),
        "embedders": service.recent_embedders(job) if watch.progress is not None else [],
        "embed_on_choices": EmbeddingJob.EmbedOn.choices,
        **extra,
    }


@require_GET
def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = get_object_or_404(EmbeddingJob, pk=pk)
    context = _detail_context(request, job)
    if request.htmx and request.htmx.target == "job-body":
        return render(request, "jobs/_detail_body.html", context)
    return render(request, "jobs/detail.html", context)


def _act(
    request: HttpRequest, pk: int, action: Callable[[EmbeddingJob], str], then: str = ""
) -> HttpResponse:
    """Run ``action`` (which returns what to tell the user) and show the job again (or go to
    ``then``); a refusal is shown on the job's page."""
    job = get_object_or_404(EmbeddingJob, pk=pk)
    try:
        done = action(job)
    except service.JobError as exc:
        job.refresh_from_db()
        context = _detail_context(request, job, action_error=str(exc))
        return render(request, "jobs/detail.html", context, status=409)
    messages.success(request, done)
    return redirect(then) if then else redirect("jobs:detail", pk=pk)


@require_POST
@_managers_only
def job_pause(request: HttpRequest, pk: int) -> HttpResponse:
    def pause(job: EmbeddingJob) -> str:
        service.pause(job)
        return f"Job #{job.pk} paused."

    return _act(request, pk, pause)


@require_POST
@_managers_only
def job_resume(request: HttpRequest, pk: int) -> HttpResponse:
    def resume(job: EmbeddingJob) -> str:
        service.resume(job)
        return f"Job #{job.pk} resumed."

    return _act(request, pk, resume)


@require_POST
@_managers_only
def job_retry(request: HttpRequest, pk: int) -> HttpResponse:
    def retry(job: EmbeddingJob) -> str:
        moved = service.retry_failed(job)
        return f"{moved:,} failed row{'' if moved == 1 else 's'} queued again."

    return _act(request, pk, retry)


@require_POST
@_managers_only
def job_recount(request: HttpRequest, pk: int) -> HttpResponse:
    def recount(job: EmbeddingJob) -> str:
        before, exact = service.recount(job)
        if before == exact:
            return f"Recounted {job.qualified_table}: {exact:,} rows, as the job's counts said."
        return (
            f"Recounted {job.qualified_table}: {exact:,} rows; the job's counts said "
            f"{before:,} and now say {exact:,}."
        )

    return _act(request, pk, recount)


@require_POST
@_managers_only
def job_change_model(request: HttpRequest, pk: int) -> HttpResponse:
    model_uri = request.POST.get("model_uri", "").strip()

    def change(job: EmbeddingJob) -> str:
        if not model_uri:
            raise service.JobError("choose the model to embed the rows with")
        queued = service.change_model(job, model_uri)
        return (
            f"Embedding {queued:,} row{'' if queued == 1 else 's'} again with {model_uri}. "
            f"Queries keep the vectors of {job.model_uri} until every row is done."
        )

    return _act(request, pk, change)


@require_POST
@_managers_only
def job_embed_on(request: HttpRequest, pk: int) -> HttpResponse:
    where = request.POST.get("embed_on", "")

    def move(job: EmbeddingJob) -> str:
        service.set_embed_on(job, where)
        return f"Job #{job.pk} now embeds on {job.get_embed_on_display().lower()}."

    return _act(request, pk, move)


@require_http_methods(["GET", "POST"])
@_managers_only
def job_delete(request: HttpRequest, pk: int) -> HttpResponse:
    """GET: the confirmation (a dialog for htmx, else a page); POST: delete."""
    if request.method == "GET":
        job = get_object_or_404(EmbeddingJob, pk=pk)
        template = "jobs/_delete_dialog.html" if request.htmx else "jobs/delete.html"
        return render(request, template, {"job": job})
    drop_column = request.POST.get("drop_column") == "on"

    def delete(job: EmbeddingJob) -> str:
        service.delete(job, drop_column=drop_column)
        dropped = f"; {job.destination} was dropped" if drop_column else ""
        return f"Job #{job.pk} deleted: its triggers and queue are gone{dropped}."

    return _act(request, pk, delete, then="jobs:list")
