"""``manage.py deploy MODEL_URI``: the console's deployment pipeline from the command line."""

from __future__ import annotations

import time
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.core.management.base import BaseCommand, CommandError, CommandParser

from console.deployments import service
from console.deployments.models import Deployment, DeploymentStep
from console.deployments.steps import TITLES
from inference.store import PRECISIONS

POLL_S = 0.5
NO_WORKER_HINT_S = 20.0


class Command(BaseCommand):
    help = (
        "Deploy (or with --disable, unload) a catalog model through the same pipeline as the "
        "console: a deployment row that a Celery worker runs. --wait prints the steps as they go."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("model_uri", metavar="MODEL_URI", help="e.g. all-MiniLM-L6-v2:v1")
        parser.add_argument(
            "--source",
            default="",
            help="hub, package, or a folder laid out like the model's Hugging Face repository "
            "(default: the catalog's source for the model)",
        )
        parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
        parser.add_argument("--disable", action="store_true", help="unload the model instead")
        parser.add_argument("--wait", action="store_true", help="print the steps until it ends")
        parser.add_argument("--user", default="", help="console user to record as requester")

    def _user(self, username: str) -> Any:
        if not username:
            return AnonymousUser()
        try:
            return get_user_model().objects.get(username=username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"no console user {username!r}") from None

    def handle(self, *args: Any, **options: Any) -> None:
        user = self._user(options["user"])
        action = Deployment.Action.DISABLE if options["disable"] else Deployment.Action.ENABLE
        try:
            deployment = service.start(
                options["model_uri"],
                user,
                action=action,
                source=options["source"],
                precision=options["precision"],
            )
        except service.DeploymentError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"deployment #{deployment.pk}: {deployment.get_action_display().lower()} "
            f"{deployment.model_uri} (queued)"
        )
        if not options["wait"]:
            return
        final = self._follow(deployment.pk)
        if final.state != Deployment.State.SUCCEEDED:
            raise CommandError(f"deployment #{final.pk} {final.state}: {final.error}")
        self.stdout.write(self.style.SUCCESS(f"deployment #{final.pk} succeeded"))

    def _follow(self, pk: int) -> Deployment:
        printed: dict[str, int] = {}  # step -> log lines printed
        states: dict[str, str] = {}
        deciles: dict[str, int] = {}
        started = time.monotonic()
        hinted = False
        while True:
            deployment = Deployment.objects.get(pk=pk)
            for step in deployment.steps.all():
                self._report(step, printed, states, deciles, started)
            if deployment.is_terminal:
                return deployment
            if (
                not hinted
                and deployment.state == Deployment.State.QUEUED
                and time.monotonic() - started > NO_WORKER_HINT_S
            ):
                hinted = True
                self.stderr.write(
                    "no worker has taken the deployment yet: is a Celery worker running "
                    "(`celery -A console worker`; `make run` starts one) on the same broker?"
                )
            time.sleep(POLL_S)

    def _report(
        self,
        step: DeploymentStep,
        printed: dict[str, int],
        states: dict[str, str],
        deciles: dict[str, int],
        started: float,
    ) -> None:
        title = TITLES.get(step.name, step.name)
        stamp = f"{time.monotonic() - started:6.1f}s [{title.lower()}]"
        lines = step.log_lines
        for line in lines[printed.get(step.name, 0) :]:
            self.stdout.write(f"{stamp} {line.split(' ', 1)[-1]}")
        printed[step.name] = len(lines)
        if step.percent is not None and step.state == DeploymentStep.State.RUNNING:
            decile = step.percent // 10
            if decile > deciles.get(step.name, -1):
                deciles[step.name] = decile
                self.stdout.write(f"{stamp} {step.percent}%")
        if states.get(step.name) != step.state and step.state not in ("pending", "running"):
            self.stdout.write(f"{stamp} {step.get_state_display().lower()}")
        states[step.name] = step.state
