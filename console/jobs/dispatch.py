"""Sending the embedding jobs' Celery tasks, by their registered names.

Code that starts a runner calls these functions instead of importing ``tasks.py``: the tasks
import the runner they run, and nothing imports the tasks but Celery's autodiscovery, so the
service, the runner and the tasks form no import cycle. The app routes the task to the jobs
queue (``console.workers.route_task``).
"""

from __future__ import annotations

import logging
import uuid

from django.utils import timezone

from console.celery import app as celery_app
from console.jobs.models import JobRunner

log = logging.getLogger(__name__)

RUN_JOB = "jobs.run"

TASK_NAMES = (RUN_JOB,)


def run_job_slot(job_id: int, slot: int, *, nudge: bool, countdown: float = 0) -> None:
    """Send a task for the slot (``tasks.run_job``); a successor is recorded as the slot's
    expected next task. A broker that cannot be reached is logged: the slot's chain starts
    again with the next nudge."""
    task_id = str(uuid.uuid4())
    if not nudge:
        JobRunner.objects.update_or_create(
            job_id=job_id,
            slot=slot,
            defaults={"next_task": task_id, "handed_over_at": timezone.now()},
        )
    try:
        celery_app.send_task(
            RUN_JOB,
            args=[job_id, slot],
            kwargs={"nudge": nudge},
            task_id=task_id,
            countdown=countdown or None,
        )
    except Exception as exc:  # kombu raises several types for an unreachable broker
        log.warning("job %s slot %s: the broker refused its task (%s)", job_id, slot, exc)
