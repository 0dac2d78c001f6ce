"""The Celery tasks of deployments. They receive ids and re-read the rows."""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_ready

from console.deployments import pipeline

log = logging.getLogger(__name__)


@shared_task(name="deployments.run", ignore_result=True)
def run_deployment(deployment_id: int) -> str:
    return pipeline.run(deployment_id)


@worker_ready.connect
def resume_stopped_deployments(**_: object) -> None:
    """A worker that starts picks up what a stopped worker left, and what the broker lost."""
    try:
        sent = pipeline.recover_stopped(requeue_queued=True)
    except Exception:  # the worker must start even if the console's database is not there yet
        log.exception("could not look for deployments to resume")
        return
    if sent:
        log.info("resuming deployments %s", sent)
