from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ConsoleConfig(AppConfig):
    name = "console"
    verbose_name = "Console"

    def ready(self) -> None:
        from console.roles import sync_role_permissions

        post_migrate.connect(sync_role_permissions, dispatch_uid="console.sync_role_permissions")
