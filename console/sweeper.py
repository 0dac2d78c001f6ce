"""The periodic sweeper: recovery that no request has to trigger.

Celery beat sends the task ``console.sweep`` (``console/tasks.py``) every ``SWEEP_EVERY_S``
seconds (``console/workers.py``); a worker runs ``sweep``. It resumes (or fails, after too
many attempts) deployments whose worker stopped, sends again the queued deployments the
broker refused, and nudges the job slots whose handed-over task never started. Pages only
read: none of this happens on a GET.
"""

from __future__ import annotations

import logging

from console.deployments import pipeline
from console.jobs import runner

log = logging.getLogger(__name__)


def sweep() -> list[int]:
    """One round; returns the ids of the deployments sent to a worker."""
    sent = pipeline.recover_stopped()
    if sent:
        log.info("sweeper: sent deployments %s to a worker", sent)
    runner.nudge_abandoned()
    return sent
