"""Sending the deployments' Celery tasks, by their registered names.

Code that starts work on a worker calls these functions instead of importing ``tasks.py``:
the tasks import the pipeline they run, and nothing imports the tasks but Celery's
autodiscovery, so the pipeline, the service and the tasks form no import cycle. A broker that
cannot be reached raises here; the callers decide what that means. The app routes the task
to the deployments queue (``console.workers.route_task``).
"""

from __future__ import annotations

from console.celery import app as celery_app

RUN_DEPLOYMENT = "deployments.run"

TASK_NAMES = (RUN_DEPLOYMENT,)


def run_deployment(deployment_id: int) -> None:
    """Send a deployment to a worker (``tasks.run_deployment``)."""
    celery_app.send_task(RUN_DEPLOYMENT, args=[deployment_id])
