"""The queues and the worker command line: deployments and jobs run on queues of their own,
and every worker (make run, compose, the tests, the benchmarks) starts from worker_command."""

from __future__ import annotations

import shlex
import sys

import yaml

from console.celery import app as celery_app
from console.deployments import dispatch as deployment_dispatch
from console.jobs import dispatch as job_dispatch
from console.workers import (
    CONCURRENCY,
    DEPLOYMENTS,
    JOBS,
    POOL,
    all_queues,
    queue_name,
    worker_command,
)
from inference.config import PROJECT_ROOT


def _queue(task_name: str) -> str:
    return celery_app.amqp.router.route({}, task_name, (), {})["queue"].name


def test_deployments_and_jobs_are_routed_to_queues_of_their_own(settings: object) -> None:
    assert _queue(deployment_dispatch.RUN_DEPLOYMENT) == "console.deployments"
    assert _queue(job_dispatch.RUN_JOB) == "console.jobs"
    settings.CELERY_TASK_DEFAULT_QUEUE = "tests-abc"  # type: ignore[attr-defined]
    assert _queue(deployment_dispatch.RUN_DEPLOYMENT) == "tests-abc.deployments"
    assert _queue(job_dispatch.RUN_JOB) == "tests-abc.jobs"
    assert all_queues() == [queue_name(DEPLOYMENTS), queue_name(JOBS)]


def test_a_default_worker_consumes_both_queues_with_room_for_a_deployment_beside_a_job() -> None:
    argv = worker_command()
    assert argv[:6] == [sys.executable, "-m", "celery", "-A", "console", "worker"]
    assert argv[argv.index("--queues") + 1].split(",") == all_queues()
    assert argv[argv.index("--pool") + 1] == POOL == "prefork"
    # One process may be taken by a job slot; another is there for a deployment.
    assert int(argv[argv.index("--concurrency") + 1]) == CONCURRENCY >= 2
    assert "--beat" not in argv and "--beat" in worker_command(beat=True)


def test_the_compose_worker_command_is_worker_command() -> None:
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    command = compose["services"]["worker"]["command"]
    argv = shlex.split(command) if isinstance(command, str) else command
    assert argv == worker_command(executable=["celery"], queues=all_queues("console"))
