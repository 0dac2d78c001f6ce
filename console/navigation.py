"""The portal's left resource menu, declared as data, and the notifications bell."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from console.deployments import queries
from console.deployments.models import Deployment
from console.inference_settings.models import SettingChange
from console.jobs.models import EmbeddingJob
from console.roles import role_label
from serverparams.models import ParameterChange


@dataclass(frozen=True)
class MenuItem:
    key: str
    label: str
    url: str
    keywords: str = ""  # other words the top bar's search finds the page by


RECENT = timedelta(days=1)
BELL_ITEMS = 8


def menu() -> list[MenuItem]:
    items = [
        MenuItem("overview", "Overview", reverse("overview")),
        MenuItem("parameters", "Server parameters", reverse("serverparams:blade")),
        MenuItem("deployments", "Deployments", reverse("deployments:list")),
        MenuItem("models", "Models", reverse("deployments:models")),
        MenuItem("settings", "Settings", reverse("inference_settings:form")),
        MenuItem("playground", "Playground", reverse("playground:page")),
        MenuItem("jobs", "Jobs", reverse("jobs:list"), "embedding jobs backfill vector column"),
    ]
    return items


@dataclass(frozen=True)
class Notification:
    title: str
    detail: str
    when: datetime
    url: str = ""
    state: str = ""  # "running", "ok", "bad" for deployments and jobs; empty for changes


def _deployment_note(deployment: Deployment) -> Notification:
    verb = "Deploying" if deployment.action == Deployment.Action.ENABLE else "Disabling"
    if deployment.is_active:
        title, state = f"{verb} {deployment.model_uri}", "running"
        detail = f"{queries.current_step(deployment)} — requested by {deployment.requested_by_name}"
    else:
        done = {
            Deployment.State.SUCCEEDED: ("ready" if deployment.action == "enable" else "unloaded"),
            Deployment.State.FAILED: "failed",
            Deployment.State.CANCELLED: "cancelled",
        }[Deployment.State(deployment.state)]
        title = f"{deployment.model_uri} {done}"
        state = "ok" if deployment.state == Deployment.State.SUCCEEDED else "bad"
        detail = (
            deployment.error
            or f"{deployment.get_action_display()} by {deployment.requested_by_name}"
        )
    return Notification(
        title=title,
        detail=detail,
        when=deployment.finished_at or deployment.started_at or deployment.created_at,
        url=reverse("deployments:detail", args=[deployment.pk]),
        state=state,
    )


def _job_target(job: EmbeddingJob) -> str:
    """ "public.docs → embedding" (or "→ docs_chunks.embedding" when it chunks)."""
    where = (
        f"{job.chunk_table}.{job.destination_column}" if job.chunking else job.destination_column
    )
    return f"{job.qualified_table} → {where}"


def _backfilling_note(job: EmbeddingJob) -> Notification:
    # From the job's own row: the bell is on every page and must not visit the job's
    # database; the job's page has the exact counts.
    if job.next_model_uri:
        title = f"Re-embedding {_job_target(job)} with {job.next_model_uri}"
        detail = f"The vectors of {job.model_uri} stay queryable until it is done"
    else:
        title = f"Backfilling {_job_target(job)}"
        done = min(job.embedded_rows, job.backfill_rows)
        detail = f"{done:,} of {job.backfill_rows:,} rows embedded with {job.model_uri}"
    return Notification(
        title=title,
        detail=job.last_error or detail,
        when=job.backfill_started_at or job.created_at,
        url=reverse("jobs:detail", args=[job.pk]),
        state="running",
    )


def _backfilled_note(job: EmbeddingJob) -> Notification:
    assert job.backfill_done_at is not None
    return Notification(
        title=f"Backfill finished: {_job_target(job)}, "
        f"{job.backfill_rows:,} row{'' if job.backfill_rows == 1 else 's'}",
        detail=f"Embedded with {job.model_uri}; job #{job.pk} keeps the table in sync",
        when=job.backfill_done_at,
        url=reverse("jobs:detail", args=[job.pk]),
        state="ok",
    )


def notifications() -> list[Notification]:
    """Running deployments and backfills first, then the last day's finished deployments and
    backfills, parameter changes and inference setting changes, newest first."""
    since = timezone.now() - RECENT
    jobs = EmbeddingJob.objects.exclude(state=EmbeddingJob.State.DELETED)
    running = [_deployment_note(d) for d in queries.active()[:BELL_ITEMS]] + [
        _backfilling_note(job)
        for job in jobs.filter(state=EmbeddingJob.State.ACTIVE, backfill_done_at=None)[:BELL_ITEMS]
    ]
    backfilled = [
        _backfilled_note(job) for job in jobs.filter(backfill_done_at__gte=since)[:BELL_ITEMS]
    ]
    finished = [
        _deployment_note(d)
        for d in Deployment.objects.filter(
            state__in=Deployment.TERMINAL_STATES, finished_at__gte=since
        )[:BELL_ITEMS]
    ]
    changes = [
        Notification(
            title=f"{change.parameter} changed",
            detail=f"{change.old_value} → {change.new_value} ({change.get_status_display()}) "
            f"by {change.username}",
            when=change.changed_at,
            url=reverse("serverparams:blade") + "?tab=modified",
        )
        for change in ParameterChange.objects.filter(changed_at__gte=since)[:BELL_ITEMS]
    ]
    tuned = [
        Notification(
            title=f"inference setting {change.key} changed",
            detail=f"{change.old_value} → {change.new_value} by {change.username}",
            when=change.changed_at,
            url=reverse("inference_settings:form"),
        )
        for change in SettingChange.objects.filter(changed_at__gte=since)[:BELL_ITEMS]
    ]
    recent = sorted(
        finished + backfilled + changes + tuned, key=lambda note: note.when, reverse=True
    )
    return (running + recent)[:BELL_ITEMS]


def portal(request: HttpRequest) -> dict[str, object]:
    """Context processor: the shell's menu, the current section and the bell."""
    if not request.user.is_authenticated:
        return {}
    path = request.path
    items = menu()
    current = next(
        (item.key for item in items if item.url != "/" and path.startswith(item.url)),
        "overview" if path == "/" else "",
    )
    notes = notifications()
    return {
        "menu_items": items,
        "current_section": current,
        "notifications": notes,
        "notifications_running": sum(1 for note in notes if note.state == "running"),
        "user_role": role_label(request.user),
    }
