"""The Celery app: deployments, parameter changes and backfills run on the worker; beat sends
the sweeper."""

from __future__ import annotations

import os

from celery import Celery

from console.workers import SWEEP, SWEEP_EVERY_S

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

app = Celery("console")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Celery beat sends the sweeper (console/sweeper.py), which owns recovery. The sweep expires
# rather than piling up while no worker takes it.
app.conf.beat_schedule = {
    "sweep": {"task": SWEEP, "schedule": SWEEP_EVERY_S, "options": {"expires": SWEEP_EVERY_S}},
}
