"""The queues and the worker command line: deployments and jobs run on queues of their own,
and every worker (make run, compose, the tests, the benchmarks) starts from worker_command."""

from __future__ import annotations

import shlex
import sys

import yaml
from django.core.management import call_command

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
    role_command,
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


def test_each_role_has_a_worker_of_its_own_queues() -> None:
    deployments = role_command("deployments", beat=True)
    jobs = role_command("jobs")
    # A deployment never waits behind a job slot: no jobs worker takes deployments, and the
    # deployments worker takes no job slot.
    assert deployments[deployments.index("--queues") + 1] == queue_name(DEPLOYMENTS)
    assert jobs[jobs.index("--queues") + 1] == queue_name(JOBS)
    assert deployments[deployments.index("--hostname") + 1] == "deployments@%h"
    assert "--beat" in deployments and "--beat" not in jobs
    everything = role_command("all", prefix="tests-x")
    assert everything[everything.index("--queues") + 1].split(",") == all_queues("tests-x")
    # The same builder: the same pool.
    assert all(argv[argv.index("--pool") + 1] == POOL for argv in (deployments, jobs))


def test_compose_runs_a_deployments_worker_scaled_job_workers_with_sidecars_and_one_beat() -> None:
    services = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())["services"]

    def argv(service: str) -> list[str]:
        command = services[service].get("command", [])
        return shlex.split(command) if isinstance(command, str) else command

    assert argv("deployer") == ["python", "manage.py", "worker", "--role", "deployments"]
    assert argv("worker") == ["python", "manage.py", "worker", "--role", "jobs", "--sidecar"]
    assert argv("beat")[:4] == ["celery", "-A", "console", "beat"]
    # Only the beat service runs beat, so `--scale worker=N` never starts a second one.
    assert not any("--beat" in argv(name) for name in services if name != "beat")
    worker = services["worker"]
    assert worker["restart"] == services["deployer"]["restart"] == "unless-stopped"
    assert worker["environment"]["WORKER_SIDECAR_DIR"].startswith("/tmp/")
    # The model store at the path the server's sidecar registered models from.
    assert "appdata:/var/lib/pg-local-ai" in worker["volumes"]
    assert "jobs@$$HOSTNAME" in " ".join(worker["healthcheck"]["test"])
    assert "--scale worker=" in (PROJECT_ROOT / "docker-compose.yml").read_text()


def test_manage_py_worker_prints_the_role_command(capsys: object) -> None:
    call_command("worker", "--role", "jobs", "--print")
    out = capsys.readouterr().out.strip()  # type: ignore[attr-defined]
    assert shlex.split(out) == role_command("jobs")
    call_command("worker", "--role", "jobs", "--name", "jobs-b", "--print")
    argv = shlex.split(capsys.readouterr().out.strip())  # type: ignore[attr-defined]
    assert argv[argv.index("--hostname") + 1] == "jobs-b@%h"
