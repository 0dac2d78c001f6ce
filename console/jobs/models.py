"""Embedding jobs: one row per job, one row per runner slot of a job.

The job row holds what the job is (which table, which text, which model, where the vectors
go) and its state; the work itself lives in the user's database (the job's queue, failed and
stamp tables, see ``objects.py``), so progress is counted there, exactly, and never here.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

# Creating, pausing, resuming, changing the model of, retrying and deleting embedding jobs.
MANAGE_JOBS = "jobs.manage_jobs"

# Rows a batch embeds and writes in one transaction. Enough that a batch fills several of the
# sidecar's model runs (short texts: 92 % of bulk throughput at 256 against 72 % at 64, see
# bench/jobs.py), few enough that a batch holds its rows for under a second.
DEFAULT_BATCH_SIZE = 256


class EmbeddingJob(models.Model):
    class InputType(models.TextChoices):
        NONE = "none", "None"
        QUERY = "query", "Query"
        PASSAGE = "passage", "Passage"

    class EmbedOn(models.TextChoices):
        # The extension's create_embeddings() inside the batch's transaction: the server's
        # sidecar embeds, on the database host's cores.
        SERVER = "server", "The server"
        # The worker running the batch calls the sidecar beside it (WORKER_INFERENCE_URL) and
        # writes the vectors in the same transaction: backfills scale with worker machines.
        WORKER = "worker", "The workers"

    class State(models.TextChoices):
        # The row is saved first, then the job's triggers and tables are created in the user's
        # database, then it becomes active; a failure between undoes both (service.create).
        CREATING = "creating", "Creating"
        ACTIVE = "active", "Active"
        PAUSED = "paused", "Paused"
        DELETED = "deleted", "Deleted"

    database = models.CharField(max_length=63)
    schema_name = models.CharField(max_length=63)
    table_name = models.CharField(max_length=63)
    key_column = models.CharField(max_length=63)
    key_type = models.CharField(max_length=100)  # format_type() of the key column
    text_columns = models.JSONField(default=list)
    text_format = models.CharField(max_length=1000, blank=True)  # e.g. "{title}: {body}"
    model_uri = models.CharField(max_length=200)
    input_type = models.CharField(max_length=10, choices=InputType.choices, default="none")
    text_prefix = models.CharField(max_length=100, blank=True)  # the model's prefix for it
    # The vector column: in the table itself, or in the chunk table when chunking is on.
    destination_column = models.CharField(max_length=63)
    dimensions = models.PositiveIntegerField()
    # Chunking: texts split by the model's tokens into chunks of ``chunk_tokens`` tokens
    # (``chunk_overlap`` of them shared with the chunk before), one row each in
    # ``chunk_table`` (key, chunk_no, chunk, embedding), beside the job's table.
    chunk_tokens = models.PositiveIntegerField(null=True, blank=True)
    chunk_overlap = models.PositiveIntegerField(default=0)
    chunk_table = models.CharField(max_length=63, blank=True)
    # A model change: the rows are embedded again with ``next_model_uri`` into a shadow
    # column while the current vectors stay queryable; the shadow replaces them at the end.
    next_model_uri = models.CharField(max_length=200, blank=True)
    next_dimensions = models.PositiveIntegerField(null=True, blank=True)
    next_text_prefix = models.CharField(max_length=100, blank=True)
    build_index = models.BooleanField(default=False)  # HNSW (cosine) once backfilled
    index_built_at = models.DateTimeField(null=True, blank=True)
    backfill_started_at = models.DateTimeField(null=True, blank=True)
    backfill_done_at = models.DateTimeField(null=True, blank=True)  # the queue first ran dry
    batch_size = models.PositiveIntegerField(default=DEFAULT_BATCH_SIZE)
    workers = models.PositiveSmallIntegerField(default=1)  # batches of this job run at once
    embed_on = models.CharField(max_length=10, choices=EmbedOn.choices, default=EmbedOn.SERVER)
    max_attempts = models.PositiveSmallIntegerField(default=5)
    retry_backoff_s = models.FloatField(default=30.0)  # doubles with each further attempt
    state = models.CharField(max_length=10, choices=State.choices, default=State.ACTIVE)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_by_name = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    backfill_rows = models.BigIntegerField(default=0)  # rows queued when the job was created
    embedded_rows = models.BigIntegerField(default=0)  # embeddings written, all batches
    last_batch_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)  # why batches wait (the sidecar is down...)
    last_error_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [
            ("manage_jobs", "Can create, pause, resume, retry and delete embedding jobs"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "database",
                    "schema_name",
                    "table_name",
                    "chunk_table",
                    "destination_column",
                ],
                condition=~Q(state="deleted"),
                name="one_job_per_destination",
            )
        ]

    def __str__(self) -> str:
        return f"job #{self.pk}: {self.qualified_table}.{self.destination_column} ({self.state})"

    @property
    def qualified_table(self) -> str:
        return f"{self.schema_name}.{self.table_name}"

    @property
    def chunking(self) -> bool:
        return self.chunk_tokens is not None

    @property
    def destination(self) -> str:
        """Where the vectors go, as a person reads it."""
        if self.chunking:
            return f"{self.schema_name}.{self.chunk_table}.{self.destination_column}"
        return f"{self.qualified_table}.{self.destination_column}"


class JobRunner(models.Model):
    """One slot of a job: the Celery task chain that runs its batches. ``next_task`` is the id
    of the task the running one handed over to; any other task for the slot is a nudge."""

    job = models.ForeignKey(EmbeddingJob, on_delete=models.CASCADE, related_name="runners")
    slot = models.PositiveSmallIntegerField()
    next_task = models.CharField(max_length=64, blank=True)
    handed_over_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True)  # host:pid that ran it last
    batches = models.BigIntegerField(default=0)
    # When the task running the slot now took it (next_task empty): a run lasts seconds, so a
    # slot taken long ago with no handover since lost its worker (runner.nudge_abandoned).
    started_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job", "slot"]
        constraints = [models.UniqueConstraint(fields=["job", "slot"], name="one_runner_per_slot")]

    def __str__(self) -> str:
        return f"job #{self.job_id} slot {self.slot}"


class WorkerRefusal(models.Model):
    """A worker that cannot embed a job's batches on itself (its sidecar lacks the model,
    serves other files or another precision, or cannot be reached), and why. Shown on the
    job's page; the worker's batches go to other workers. Cleared when it embeds again."""

    job = models.ForeignKey(EmbeddingJob, on_delete=models.CASCADE, related_name="refusals")
    worker = models.CharField(max_length=200)  # the Celery node name (name@host)
    reason = models.TextField()
    refused_at = models.DateTimeField()
    refusals = models.PositiveIntegerField(default=1)

    class Meta:
        ordering = ["job", "worker"]
        constraints = [
            models.UniqueConstraint(fields=["job", "worker"], name="one_refusal_per_worker")
        ]

    def __str__(self) -> str:
        return f"job #{self.job_id}: {self.worker} refuses ({self.reason})"
