"""The sweeper owns recovery: it resumes a deployment whose worker stopped and sends again one
the broker refused, on Celery beat's schedule; the deployments pages only read."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from console import sweeper
from console.celery import app as celery_app
from console.deployments import dispatch
from console.deployments.models import Deployment, DeploymentStep
from console.workers import DEPLOYMENTS, SWEEP, SWEEP_EVERY_S, queue_name


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The deployment ids sent to a worker (nothing reaches the broker)."""
    ids: list[int] = []
    monkeypatch.setattr(dispatch, "run_deployment", ids.append)
    monkeypatch.setattr(celery_app, "send_task", lambda *a, **k: pytest.fail("a task was sent"))
    return ids


def _stopped(**fields: object) -> Deployment:
    """A running deployment whose worker stopped during fetch (stale heartbeat)."""
    deployment = Deployment.objects.create(
        model_uri="tiny:v1", state="running", worker="elsewhere:1", attempts=1, **fields
    )
    DeploymentStep.objects.create(deployment=deployment, name="fetch", position=0, state="running")
    return deployment


def _snapshot() -> list[tuple]:
    return list(Deployment.objects.order_by("pk").values_list())


def test_beat_sends_the_sweep_every_few_seconds_to_the_deployments_queue() -> None:
    entries = [e for e in celery_app.conf.beat_schedule.values() if e["task"] == SWEEP]
    assert len(entries) == 1 and entries[0]["schedule"] == SWEEP_EVERY_S <= 10
    assert celery_app.amqp.router.route({}, SWEEP, (), {})["queue"].name == queue_name(DEPLOYMENTS)
    celery_app.autodiscover_tasks(force=True)
    celery_app.loader.import_default_modules()
    assert SWEEP in celery_app.tasks


def test_the_sweeper_resumes_a_deployment_whose_worker_stopped(db: None, sent: list[int]) -> None:
    deployment = _stopped(heartbeat_at=None)
    assert sweeper.sweep() == [deployment.pk]
    assert sent == [deployment.pk]
    resumed = Deployment.objects.get(pk=deployment.pk)
    assert resumed.state == "queued" and resumed.worker == ""
    assert "resuming" in resumed.steps.get(name="fetch").log


def test_the_sweeper_sends_again_a_deployment_the_broker_refused(db: None, sent: list[int]) -> None:
    refused = Deployment.objects.create(model_uri="tiny:v1")  # queued, never sent
    Deployment.objects.filter(pk=refused.pk).update(
        created_at=timezone.now() - timedelta(seconds=30)
    )
    assert sweeper.sweep() == [refused.pk] and sent == [refused.pk]


def test_the_deployments_pages_only_read(admin_client: Client, sent: list[int]) -> None:
    deployment = _stopped(heartbeat_at=timezone.now() - timedelta(hours=1))
    refused = Deployment.objects.create(model_uri="other:v1")
    Deployment.objects.filter(pk=refused.pk).update(
        created_at=timezone.now() - timedelta(seconds=30)
    )
    before = _snapshot()
    assert admin_client.get("/deployments/").status_code == 200
    assert admin_client.get(f"/deployments/{deployment.pk}/").status_code == 200
    assert admin_client.get(f"/deployments/{refused.pk}/").status_code == 200
    assert _snapshot() == before and sent == []
