"""``manage.py server start|stop|restart|status|uri``: the managed PostgreSQL server."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from serverparams.server import ManagedServer, ServerError, get_managed_server


class Command(BaseCommand):
    help = (
        "Start, stop, restart or inspect the managed PostgreSQL server; "
        "'uri' prints a superuser connection URI."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["start", "stop", "restart", "status", "uri"])
        parser.add_argument("--dbname", default="postgres", help="database for 'uri'")

    def handle(self, *args: Any, **options: Any) -> None:
        server = get_managed_server()
        action = options["action"]
        try:
            if action == "uri":
                self.stdout.write(server.uri(options["dbname"]))
            elif action == "status":
                self._print_status(server)
            else:
                getattr(server, action)()
                self._print_status(server)
        except ServerError as exc:
            raise CommandError(str(exc)) from exc
        except OSError as exc:  # e.g. a VAR_DIR that cannot be created
            raise CommandError(f"Cannot {action} the managed server: {exc}") from exc

    def _print_status(self, server: ManagedServer) -> None:
        status = server.status()
        state = "running" if status.running else "stopped"
        rows = [
            ("state", state),
            ("kind", "embedded" if status.controls_process else "external"),
            ("version", status.version or "-"),
            ("pid", status.pid or "-"),
            ("port", status.port or "-"),
            ("data dir", status.data_dir or "-"),
            ("uptime", str(status.uptime).split(".")[0] if status.uptime else "-"),
            ("pending restart", "yes" if status.pending_restart else "no"),
            ("uri", server.uri()),
        ]
        for label, value in rows:
            self.stdout.write(f"{label:16} {value}")
        if status.message:
            self.stdout.write(status.message)
