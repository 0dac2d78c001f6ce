"""``manage.py addmodel SOURCE``: add a model from the Hugging Face Hub or a folder to the
catalog and deploy it, as the Models page's "Add a model" does: an embedding model, or a
cross-encoder as a reranker (``--kind`` insists on one)."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import CommandError, CommandParser

from console.deployments import adding
from console.deployments.management.commands import deploy
from console.deployments.models import Deployment
from inference.modelconfig import MODEL_KINDS
from inference.store import PRECISIONS


class Command(deploy.Command):
    help = (
        "Inspect SOURCE (hf:ORG/REPO[@REVISION], or the path of a folder laid out like a Hub "
        "repository), show what it holds (an embedding model, or a cross-encoder: a reranker), "
        "and on confirmation add it to the catalog and deploy it through the same pipeline as "
        "the console (the parity gate included)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("source", metavar="SOURCE")
        parser.add_argument(
            "--name", default="", metavar="NAME:VERSION", help="the model's URI (default: proposed)"
        )
        parser.add_argument("--yes", action="store_true", help="add without asking")
        parser.add_argument(
            "--kind",
            choices=MODEL_KINDS,
            default=None,
            help="insist on a kind: a source of the other kind is refused (default: either, an "
            "embedding model or a cross-encoder, added as a reranker)",
        )
        parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
        parser.add_argument("--wait", action="store_true", help="print the steps until it ends")
        parser.add_argument("--user", default="", help="console user to record as requester")

    def handle(self, *args: Any, **options: Any) -> None:
        user = self._user(options["user"])
        try:
            inspection = adding.inspect(options["source"], options["kind"])
        except adding.AddModelError as exc:
            raise CommandError(str(exc)) from None
        width = max(len(label) for label, _ in inspection.facts())
        for label, value in inspection.facts():
            self.stdout.write(f"{label:<{width}}  {value}")
        for note in inspection.notes:
            self.stdout.write(f"note: {note}")
        if not inspection.ok:
            raise CommandError(
                "this model cannot be served faithfully:\n"
                + "\n".join(f"- {refusal}" for refusal in inspection.refusals)
            )
        uri = options["name"] or inspection.proposed_uri
        if (problem := adding.check_uri(uri)) is not None:
            raise CommandError(f"{problem} (--name NAME:VERSION)")
        if not options["yes"]:
            if not sys.stdin.isatty():
                raise CommandError("add --yes to add the model without being asked")
            answer = input(f"Add {uri} to the catalog and deploy it? [y/N] ").strip().lower()
            if answer not in ("y", "yes"):
                raise CommandError("nothing was added")
        try:
            _, deployment = adding.add_model(
                options["source"],
                uri,
                user,
                precision=options["precision"],
                kind=options["kind"],
            )
        except adding.AddModelError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"added {uri}; deployment #{deployment.pk} (queued)")
        if options["wait"]:
            final = self._follow(deployment.pk)
            if final.state != Deployment.State.SUCCEEDED:
                raise CommandError(f"deployment #{final.pk} {final.state}: {final.error}")
            self.stdout.write(self.style.SUCCESS(f"{uri} is deployed"))
