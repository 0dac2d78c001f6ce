"""Run one Celery worker of a role, optionally with an inference sidecar beside it.

    manage.py worker --role jobs --sidecar     # a worker machine: jobs, and its own sidecar
    manage.py worker --role deployments        # the deployments (one per installation)
    manage.py worker --role jobs --print       # the worker's command line, and nothing else

The worker's command line is ``console.workers.role_command``'s. With ``--sidecar``, a sidecar
starts first on ``127.0.0.1:WORKER_SIDECAR_PORT`` (8091) with its state in
``WORKER_SIDECAR_DIR`` (default ``VAR_DIR/worker-sidecar``), and the worker embeds the batches
of jobs that embed on the workers there (``WORKER_INFERENCE_URL``). The sidecar registers the
server's models from their files when a job first needs them, so a worker machine needs only
the shared model store. Both processes log to files beside the sidecar's state, and every
line they write is echoed to this command's output (a container's log). If either process
exits, the other is stopped and the command exits with an error, for the service manager
(compose's ``restart``) to start both again; SIGTERM stops both, the worker first (its
running batches finish or roll back).
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, OutputWrapper

from console.workers import ROLES, role_command
from inference.config import env_int, env_str
from inference.process import ChildProcess, SidecarProcess, StartError, start_sidecar

SIDECAR_START_S = 120.0  # models it had registered load again first
ECHO_EVERY_S = 0.5


class Command(BaseCommand):
    help = "Run a Celery worker of one role (deployments, jobs, all), with a sidecar beside it."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--role", choices=sorted(ROLES), default="all")
        parser.add_argument("--beat", action="store_true", help="embed Celery beat (one only)")
        parser.add_argument(
            "--sidecar", action="store_true", help="start an inference sidecar beside the worker"
        )
        parser.add_argument("--concurrency", type=int, help="processes (default: the role's)")
        parser.add_argument(
            "--name",
            help="the worker's node name before @host (default: the role); give each worker of"
            " a role on one machine its own, and its sidecar its own WORKER_SIDECAR_PORT",
        )
        parser.add_argument("--print", action="store_true", help="print the command line only")

    def handle(self, *args: object, **options: object) -> None:
        argv = role_command(
            str(options["role"]),
            beat=bool(options["beat"]),
            concurrency=options["concurrency"],  # type: ignore[arg-type]
            name=options["name"],  # type: ignore[arg-type]
        )
        if options["print"]:
            self.stdout.write(shlex.join(argv))
            return
        env = dict(os.environ)
        state = Path(env_str("WORKER_SIDECAR_DIR", "") or Path(settings.VAR_DIR) / "worker-sidecar")
        # This worker's own logs, beside its sidecar's state (the VAR_DIR of a worker machine
        # may be a store the other machines share).
        logs = state / "log"
        logs.mkdir(parents=True, exist_ok=True)
        children: list[ChildProcess] = []
        echo = LogEcho(self.stdout)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            echo.start()
            if options["sidecar"]:
                echo.follow("sidecar", logs / "inference.log")
                sidecar = self._start_sidecar(state, logs)
                children.append(sidecar.process)
                env["WORKER_INFERENCE_URL"] = sidecar.url
                env["WORKER_INFERENCE_TOKEN"] = sidecar.token or ""
            log = logs / f"worker-{options['name'] or options['role']}.log"
            echo.follow("worker", log)
            worker = ChildProcess("worker", argv, log, env=env)
            children.append(worker)
            self.stdout.write(f"worker: {shlex.join(argv)} (log: {worker.log_path})")
            while True:
                for child in children:
                    if not child.alive():
                        raise CommandError(
                            f"{child.name} exited with code {child.returncode}; see "
                            f"{child.log_path}. Stopping the others."
                        )
                time.sleep(1)
        except StartError as exc:
            raise CommandError(str(exc)) from exc
        except KeyboardInterrupt:
            pass
        finally:
            for child in reversed(children):  # the worker first: its batches end cleanly
                child.stop()
            echo.stop()

    def _start_sidecar(self, state: Path, logs: Path) -> SidecarProcess:
        sidecar = start_sidecar(
            state,
            port=env_int("WORKER_SIDECAR_PORT", 8091),
            # On loopback, for this worker only: its own token, if one is set.
            token=os.environ.get("WORKER_INFERENCE_TOKEN", ""),
            log_dir=logs,
            timeout=SIDECAR_START_S,
        )
        self.stdout.write(f"sidecar: {sidecar.url} (state: {state}, log: {sidecar.log_path})")
        return sidecar


class LogEcho:
    """Copies the lines the children append to their logs to this command's output, each
    prefixed with the child's name, so that a container's log (``docker compose logs``)
    shows the worker and its sidecar as they run."""

    def __init__(self, out: OutputWrapper) -> None:
        self.out = out
        self.files: list[list] = []  # [name, path, offset, partial line]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log echo", daemon=True)

    def follow(self, name: str, path: Path) -> None:
        """Echo what is appended to ``path`` from now on."""
        offset = path.stat().st_size if path.exists() else 0
        self.files.append([name, path, offset, b""])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(ECHO_EVERY_S):
            self.flush()

    def flush(self) -> None:
        for entry in self.files:
            name, path, offset, partial = entry
            try:
                with path.open("rb") as log:
                    log.seek(offset)
                    data = log.read()
            except OSError:
                continue
            entry[2] = offset + len(data)
            *lines, entry[3] = (partial + data).split(b"\n")
            for line in lines:
                self.out.write(f"[{name}] {line.decode(errors='replace')}")
