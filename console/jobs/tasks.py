"""The Celery tasks of embedding jobs. They receive ids and re-read the rows."""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_ready

from console.jobs import runner

log = logging.getLogger(__name__)


@shared_task(name="jobs.run", bind=True, ignore_result=True)
def run_job(self: object, job_id: int, slot: int, nudge: bool = False) -> str:
    request = self.request  # type: ignore[attr-defined]
    return runner.run(job_id, slot, request.id, nudge=nudge, node=request.hostname or "")


@worker_ready.connect
def nudge_active_jobs(**_: object) -> None:
    """A worker that starts sends every active job's runners again: a chain a stopped
    worker held resumes, and one the broker lost starts over."""
    try:
        nudged = runner.nudge_active_jobs()
    except Exception:  # the worker must start even if the console's database is not there yet
        log.exception("could not look for embedding jobs to resume")
        return
    if nudged:
        log.info("nudged embedding jobs %s", nudged)
