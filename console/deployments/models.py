"""Deployments: one row per request to enable or disable a model, one row per step.

The rows are the state (the broker only carries the id): a worker claims a deployment with a
conditional UPDATE, beats a heartbeat while it runs it, and records each step's start, end,
progress and log lines. At most one deployment per model is active, by a database constraint.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

MANAGE_DEPLOYMENTS = "deployments.manage_deployments"


def _duration(started: datetime | None, finished: datetime | None) -> float | None:
    """Seconds from start to finish, or to now while it runs; None before it starts."""
    if started is None:
        return None
    return ((finished or timezone.now()) - started).total_seconds()


class Deployment(models.Model):
    class Action(models.TextChoices):
        ENABLE = "enable", "Enable"
        DISABLE = "disable", "Disable"

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE_STATES = (State.QUEUED, State.RUNNING)
    TERMINAL_STATES = (State.SUCCEEDED, State.FAILED, State.CANCELLED)

    action = models.CharField(max_length=10, choices=Action.choices, default=Action.ENABLE)
    model_uri = models.CharField(max_length=200, db_index=True)
    source = models.CharField(max_length=500, blank=True)  # empty: the catalog's default
    precision = models.CharField(max_length=10, default="fp32")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    # Kept beside the foreign key so that the history survives the user's deletion.
    requested_by_name = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    error = models.TextField(blank=True)  # why it failed: the step, the cause, what to do
    cancel_requested = models.BooleanField(default=False)
    attempts = models.PositiveIntegerField(default=0)  # claims by a worker (resumes add one)
    worker = models.CharField(max_length=200, blank=True)  # host:pid of the claiming worker
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # When the broker took its task; None while it refused it (down), so it is sent again.
    sent_at = models.DateTimeField(null=True, blank=True)
    retry_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["model_uri"],
                condition=Q(state__in=["queued", "running"]),
                name="one_active_deployment_per_model",
            )
        ]
        permissions = [
            ("manage_deployments", "Can deploy, disable, retry and cancel models"),
        ]

    def __str__(self) -> str:
        return f"{self.get_action_display()} {self.model_uri} ({self.state})"

    @property
    def is_active(self) -> bool:
        return self.state in self.ACTIVE_STATES

    @property
    def is_terminal(self) -> bool:
        return self.state in self.TERMINAL_STATES

    @property
    def status_label(self) -> str:
        """The state as pages show it: a finished enable is "Ready", a disable "Unloaded"."""
        if self.state == self.State.SUCCEEDED:
            return "Ready" if self.action == self.Action.ENABLE else "Unloaded"
        return self.get_state_display()

    @property
    def duration_s(self) -> float | None:
        return _duration(self.started_at, self.finished_at)


class DeploymentStep(models.Model):
    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Done"
        SKIPPED = "skipped", "Skipped"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Not run"

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="steps")
    name = models.CharField(max_length=20)
    position = models.PositiveSmallIntegerField()
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    done = models.BigIntegerField(default=0)
    total = models.BigIntegerField(default=0)  # 0: no measure of progress for this step
    unit = models.CharField(max_length=10, blank=True)  # "bytes" or empty
    message = models.TextField(blank=True)  # the last thing the step said
    log = models.TextField(blank=True)  # one line per entry
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["deployment", "position"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "name"], name="one_row_per_step")
        ]

    def __str__(self) -> str:
        return f"{self.deployment_id}/{self.name}: {self.state}"

    @property
    def percent(self) -> int | None:
        if self.total <= 0:
            return None
        return max(0, min(100, int(self.done * 100 / self.total)))

    @property
    def log_lines(self) -> list[str]:
        return [line for line in self.log.splitlines() if line]

    @property
    def duration_s(self) -> float | None:
        return _duration(self.started_at, self.finished_at)
