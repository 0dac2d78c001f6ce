from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "console.jobs"
    label = "jobs"
    verbose_name = "Embedding jobs"

    def ready(self) -> None:
        # A worker that starts sends every active job's runners again (see tasks.py).
        from console.jobs import tasks  # noqa: F401
