"""Start the whole system on embedded defaults and keep it running until Ctrl-C.

Order: Redis (the running one at REDIS_URL, else a ``redis-server`` of our own), the managed
PostgreSQL server (an external one at MANAGED_DATABASE_URL must already run), the inference
sidecar (with every model of the store registered and loaded), the Celery workers (one for
deployments, with beat, and one for jobs), and the console. Each child's output goes to
``VAR_DIR/log``. If any child exits, everything is stopped and the command says which one
and where its log is.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import redis
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from console.workers import role_command
from inference.client import InferenceError
from inference.config import inference_socket, log_dir
from inference.process import ChildProcess, StartError, http_ready, start_sidecar
from serverparams.server import ServerError, get_managed_server

# How long each child may take to answer after it starts.
START_TIMEOUT_S = 60
REDIS_START_TIMEOUT_S = 15


class Command(BaseCommand):
    help = "Start the managed server, Redis, the sidecar, the Celery workers and the console."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--web", default="127.0.0.1:8000", help="console address")

    def handle(self, *args: object, **options: object) -> None:
        logs = log_dir(Path(settings.VAR_DIR))
        logs.mkdir(parents=True, exist_ok=True)
        self.children: list[ChildProcess] = []
        server = None
        started_server = False
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            self._start_redis(logs)
            self._step("managed PostgreSQL server")
            server = get_managed_server()
            if server.controls_process:
                # The embedded server shares this machine with the sidecar: its SQL module
                # reaches the sidecar over a Unix socket beside the server's own, which a lone
                # query crosses faster than TCP's loopback. Children inherit the choice.
                # (Where the sidecar listens on a Unix socket alone, that is the one.)
                if not settings.INFERENCE_URL.startswith("unix:"):
                    os.environ.setdefault(
                        "INFERENCE_SOCKET", str(server.socket_dir / "inference.sock")
                    )
                    server = get_managed_server()
                # Stop on the way out only what this command started: a server that was
                # already running stays up.
                started_server = not server.status().running
                server.start()
                self._ok(server.uri())
            else:
                # An external server is not ours to start: it only has to answer.
                problem = server.status().message
                if problem:
                    raise CommandError(problem)
                self._ok("using the external server at MANAGED_DATABASE_URL")
            self._start_sidecar(logs)
            # A worker of each role: deployments never wait behind a job's batches. Beat
            # (the sweeper's clock) runs in the deployments worker, exactly once. On this
            # machine the jobs worker embeds with the server's own sidecar.
            for role, beat in (("deployments", True), ("jobs", False)):
                self._step(f"Celery worker ({role})")
                self._start(f"worker-{role}", role_command(role, beat=beat), logs)
                self._ok(f"log: {logs / f'worker-{role}.log'}")
            self._step("console")
            web = self._start(
                "web",
                [
                    sys.executable,
                    "manage.py",
                    "runserver",
                    str(options["web"]),
                    "--noreload",
                    "--insecure",
                ],
                logs,
            )
            web.wait_ready(http_ready(f"http://{options['web']}/accounts/login/"), START_TIMEOUT_S)
            self._ok(f"http://{options['web']}/")
            call_command("ensureadmin")
            self.stdout.write(self.style.SUCCESS("\nEverything is running. Ctrl-C stops it all."))
            self._watch()
        except KeyboardInterrupt:
            self.stdout.write("\nstopping ...")
        except (ServerError, InferenceError, StartError) as exc:
            # Their messages say what to do; a traceback would only hide that.
            raise CommandError(str(exc)) from exc
        finally:
            for child in reversed(self.children):
                child.stop()
            if started_server and server is not None:
                server.stop()

    def _step(self, what: str) -> None:
        self.stdout.write(f"starting {what} ... ", ending="")
        self.stdout.flush()

    def _ok(self, detail: str) -> None:
        self.stdout.write(self.style.SUCCESS("ok") + f"  {detail}")

    def _start(self, name: str, argv: list[str], logs: Path) -> ChildProcess:
        child = ChildProcess(name, argv, logs / f"{name}.log")
        self.children.append(child)
        return child

    def _start_redis(self, logs: Path) -> None:
        self._step("Redis")
        url = settings.REDIS_URL
        if _redis_ok(url):
            self._ok(f"using the running Redis at {url}")
            return
        binary = shutil.which("redis-server")
        parts = urlsplit(url)
        if binary is None:
            raise CommandError(
                f"no Redis answers at {url} and redis-server is not installed: "
                "install it (apt-get install redis-server) or set REDIS_URL to a running Redis"
            )
        data = Path(settings.VAR_DIR) / "redis"
        data.mkdir(parents=True, exist_ok=True)
        child = self._start(
            "redis",
            [
                binary,
                "--bind",
                parts.hostname or "127.0.0.1",
                "--port",
                str(parts.port or 6379),
                "--dir",
                str(data),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            logs,
        )
        child.wait_ready(lambda: _redis_ok(url), REDIS_START_TIMEOUT_S)
        self._ok(f"started redis-server at {url}")

    def _start_sidecar(self, logs: Path) -> None:
        self._step("inference sidecar")
        url = settings.INFERENCE_URL
        parts = urlsplit(url)
        only_unix = url.startswith("unix:")
        also_unix = None if only_unix else inference_socket()
        sidecar = start_sidecar(
            Path(settings.VAR_DIR),
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 8090,
            uds=Path(url.removeprefix("unix:")) if only_unix else None,
            unix_socket=also_unix,
            token=settings.INFERENCE_TOKEN,
            log_dir=logs,
            timeout=START_TIMEOUT_S,
        )
        self.children.append(sidecar.process)
        # Models are provisioned by deployments (Save in Server parameters, or manage.py
        # deploy); the sidecar itself loads again what was loaded when it last stopped.
        with sidecar.client as client:
            loaded = [m["model_uri"] for m in client.models() if m.get("loaded")]
        also = f" and unix:{also_unix} (for SQL)" if also_unix else ""
        self._ok(f"{url}{also}  models loaded: {', '.join(loaded) or 'none'}")

    def _watch(self) -> None:
        while True:
            for child in self.children:
                if not child.alive():
                    raise CommandError(
                        f"{child.name} exited with code {child.returncode}; "
                        f"see {child.log_path}. Stopping everything."
                    )
            time.sleep(1)


def _redis_ok(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False
