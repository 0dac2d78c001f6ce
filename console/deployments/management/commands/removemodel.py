"""``manage.py removemodel URI``: unload an added model, delete its files and drop it from the
catalog; refused while an embedding job or a generated column still names it, or, for a
reranker, the sidecar's setting default_rerank_model."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from console.deployments import adding


class Command(BaseCommand):
    help = (
        "Remove a model that was added to the catalog: unload it, delete its files and drop its "
        "entry. Refused while an embedding job or a generated column names it, or (a reranker) "
        "the inference setting default_rerank_model."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("model_uri", metavar="MODEL_URI")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            adding.remove_model(options["model_uri"])
        except adding.RemoveModelError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"removed {options['model_uri']}")
