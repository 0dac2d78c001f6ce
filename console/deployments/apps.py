from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "console.deployments"
    label = "deployments"
    verbose_name = "Deployments"

    def ready(self) -> None:
        # The blade's Save reaches the pipeline through serverparams' hook registry, and the
        # worker resumes or fails what a stopped worker left running.
        from console.deployments import hooks, tasks  # noqa: F401
