"""The console's own Celery task: the sweeper, which Celery beat sends (see console/celery.py)."""

from __future__ import annotations

from celery import shared_task

from console import sweeper
from console.workers import SWEEP


@shared_task(name=SWEEP, ignore_result=True)
def sweep() -> list[int]:
    return sweeper.sweep()
