"""Start the whole system on embedded defaults and keep it running until Ctrl-C.

Order: Redis (the running one at REDIS_URL, else a ``redis-server`` of our own), the managed
PostgreSQL server (an external one at MANAGED_DATABASE_URL must already run), the inference
sidecar (with every model of the store registered and loaded), the Celery worker, and the
console. Each child's output goes to ``VAR_DIR/logs``. If any child exits, everything is
stopped and the command says which one and where its log is.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import httpx
import redis
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from inference.client import InferenceClient, InferenceError
from inference.config import models_dir
from inference.store import ModelStore
from serverparams.server import ServerError, get_managed_server


class Child:
    def __init__(self, name: str, argv: list[str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the child
        try:
            self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        except OSError as exc:
            self._log.close()
            raise CommandError(f"cannot start {name} ({argv[0]}): {exc}") from exc

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class Command(BaseCommand):
    help = "Start the managed server, Redis, the sidecar, the Celery worker and the console."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--web", default="127.0.0.1:8000", help="console address")

    def handle(self, *args: object, **options: object) -> None:
        log_dir = Path(settings.VAR_DIR) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.children: list[Child] = []
        server = None
        started_server = False
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            self._start_redis(log_dir)
            self._step("managed PostgreSQL server")
            server = get_managed_server()
            if server.controls_process:
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
            self._start_sidecar(log_dir)
            self._step("Celery worker")
            self.children.append(
                Child(
                    "worker",
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "console",
                        "worker",
                        "--loglevel",
                        "INFO",
                        "--concurrency",
                        "1",
                    ],
                    log_dir,
                )
            )
            self._ok(f"log: {log_dir / 'worker.log'}")
            self._step("console")
            self.children.append(
                Child(
                    "web",
                    [
                        sys.executable,
                        "manage.py",
                        "runserver",
                        str(options["web"]),
                        "--noreload",
                        "--insecure",
                    ],
                    log_dir,
                )
            )
            self._wait_http(f"http://{options['web']}/accounts/login/", "web")
            self._ok(f"http://{options['web']}/")
            call_command("ensureadmin")
            self.stdout.write(self.style.SUCCESS("\nEverything is running. Ctrl-C stops it all."))
            self._watch()
        except KeyboardInterrupt:
            self.stdout.write("\nstopping ...")
        except (ServerError, InferenceError) as exc:
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

    def _start_redis(self, log_dir: Path) -> None:
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
        self.children.append(
            Child(
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
                log_dir,
            )
        )
        deadline = time.monotonic() + 15
        while not _redis_ok(url):
            if time.monotonic() > deadline or not self.children[-1].alive():
                raise CommandError(f"redis-server did not start; see {log_dir / 'redis.log'}")
            time.sleep(0.2)
        self._ok(f"started redis-server at {url}")

    def _start_sidecar(self, log_dir: Path) -> None:
        self._step("inference sidecar")
        parts = urlsplit(settings.INFERENCE_URL)
        self.children.append(
            Child(
                "inference",
                [
                    sys.executable,
                    "-m",
                    "inference",
                    "serve",
                    "--host",
                    parts.hostname or "127.0.0.1",
                    "--port",
                    str(parts.port or 8090),
                ],
                log_dir,
            )
        )
        self._wait_http(settings.INFERENCE_URL + "/health", "inference")
        with InferenceClient(settings.INFERENCE_URL, token=settings.INFERENCE_TOKEN) as client:
            registered = {m["model_uri"] for m in client.models()}
            for stored in ModelStore(models_dir()).list():
                try:
                    if stored.uri in registered:
                        client.load(stored.uri)
                    else:
                        client.register(stored.uri, str(stored.path))  # registering loads it
                except InferenceError as exc:
                    self.stderr.write(f"model {stored.uri} was not loaded: {exc}")
            loaded = [m["model_uri"] for m in client.models() if m.get("loaded")]
        self._ok(f"{settings.INFERENCE_URL}  models loaded: {', '.join(loaded) or 'none'}")

    def _wait_http(self, url: str, name: str, timeout: float = 60) -> None:
        child = next(c for c in self.children if c.name == name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not child.alive():
                raise CommandError(f"{name} exited at start; see {child.log_path}")
            try:
                if httpx.get(url, timeout=2).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise CommandError(f"{name} did not answer at {url} within {timeout:.0f} s")

    def _watch(self) -> None:
        while True:
            for child in self.children:
                if not child.alive():
                    raise CommandError(
                        f"{child.name} exited with code {child.process.returncode}; "
                        f"see {child.log_path}. Stopping everything."
                    )
            time.sleep(1)


def _redis_ok(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False
