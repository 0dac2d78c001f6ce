from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "console.deployments"
    label = "deployments"
    verbose_name = "Deployments"

    def ready(self) -> None:
        # The blade's Save reaches the pipeline through serverparams' hook registry. The tasks
        # (and the worker's resuming what a stopped worker left) are found by Celery's
        # autodiscovery; everything else sends them by name (dispatch.py).
        from console.deployments import hooks  # noqa: F401
