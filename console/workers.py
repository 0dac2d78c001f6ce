"""The Celery queues, the workers' roles and the one command line that starts a worker.

Deployments and embedding jobs have queues of their own, named from ``CELERY_QUEUE`` (the
installation's prefix, ``console`` by default): ``console.deployments`` and ``console.jobs``.
The Celery app routes each task by its name (``route_task``, the app's ``task_routes``), so
the dispatch modules name no queue. Every worker is started with the argv ``worker_command``
builds: ``make run`` (``manage.py up``), ``manage.py worker`` (docker-compose.yml's workers),
the tests' stacks and the benchmarks call it.

An installation runs a worker of each role (``ROLES``): one for deployments, so that a
deployment never waits behind a job's batches (a job slot holds its process for seconds at a
time), and one or more for jobs, one per worker machine, each with a sidecar beside it
(``manage.py worker --role jobs --sidecar``). The tests' and benchmarks' short-lived workers
take both queues in one process (role ``all``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from django.conf import settings

DEPLOYMENTS = "deployments"
JOBS = "jobs"

# The sweeper (console/sweeper.py), which Celery beat sends every SWEEP_EVERY_S seconds.
SWEEP = "console.sweep"
SWEEP_EVERY_S = 10.0

# Task name prefix -> the queue (suffix) it runs on. The sweep is short: it goes with the
# deployments, never behind a job slot.
_ROUTES = {"deployments.": DEPLOYMENTS, "jobs.": JOBS, SWEEP: DEPLOYMENTS}

# The production pool. Prefork runs each task in a child process, taken one at a time (a
# prefetch multiplier of 1). Two processes: a jobs worker runs two slots at once, and a
# worker of both queues (role "all") has one for a deployment beside a running job slot.
POOL = "prefork"
CONCURRENCY = 2


def queue_name(kind: str, prefix: str | None = None) -> str:
    """The queue of ``kind`` (``DEPLOYMENTS`` or ``JOBS``) under ``prefix`` (default: the
    setting ``CELERY_TASK_DEFAULT_QUEUE``, from ``CELERY_QUEUE``)."""
    return f"{prefix or settings.CELERY_TASK_DEFAULT_QUEUE}.{kind}"


def all_queues(prefix: str | None = None) -> list[str]:
    """Every queue an installation's workers consume."""
    return [queue_name(DEPLOYMENTS, prefix), queue_name(JOBS, prefix)]


def route_task(name: str, args: object, kwargs: object, options: object, **_: object) -> dict:
    """Celery router (``task_routes``): a task's queue from its name; other tasks go to
    the default queue. Read at send time, so a changed setting takes effect at once."""
    for start, kind in _ROUTES.items():
        if name.startswith(start):
            return {"queue": queue_name(kind)}
    return {"queue": settings.CELERY_TASK_DEFAULT_QUEUE}


# role -> (the queue kinds it consumes, its processes). Deployments run one at a time anyway
# (each holds a lock of its model); job slots share the jobs workers' processes.
ROLES: dict[str, tuple[tuple[str, ...], int]] = {
    "deployments": ((DEPLOYMENTS,), 1),
    "jobs": ((JOBS,), CONCURRENCY),
    "all": ((DEPLOYMENTS, JOBS), CONCURRENCY),
}


def role_command(
    role: str,
    *,
    beat: bool = False,
    concurrency: int | None = None,
    prefix: str | None = None,
    name: str | None = None,
    **options: object,
) -> list[str]:
    """``worker_command`` for a worker of ``role`` (a key of ``ROLES``), named ``name@%h``
    (default: the role's; two workers of a role on one machine need names of their own)."""
    kinds, processes = ROLES[role]
    return worker_command(
        queues=[queue_name(kind, prefix) for kind in kinds],
        concurrency=concurrency or processes,
        hostname=f"{name or role}@%h",
        beat=beat,
        **options,  # type: ignore[arg-type]
    )


def worker_command(
    *,
    queues: Sequence[str] | None = None,
    concurrency: int = CONCURRENCY,
    pool: str = POOL,
    hostname: str | None = None,
    beat: bool = False,
    loglevel: str = "INFO",
    quiet: bool = False,
    executable: Sequence[str] | None = None,
) -> list[str]:
    """The argv of a Celery worker consuming ``queues`` (default: ``all_queues()``).

    ``executable`` is how Celery is run (default: this interpreter's ``-m celery``; the
    container image runs ``celery``). ``beat`` embeds the beat scheduler, which sends the
    sweeper: exactly one beat must run per installation. ``quiet`` drops gossip and mingle,
    which only slow a short-lived worker's start. ``hostname`` names the worker node
    (Celery's default: ``celery@%h``)."""
    argv = [*(executable or (sys.executable, "-m", "celery")), "-A", "console", "worker"]
    argv += ["--queues", ",".join(queues or all_queues())]
    argv += ["--pool", pool, "--concurrency", str(concurrency), "--loglevel", loglevel]
    if hostname:
        argv += ["--hostname", hostname]
    if quiet:
        argv += ["--without-gossip", "--without-mingle"]
    if beat:
        argv += ["--beat"]
    return argv
