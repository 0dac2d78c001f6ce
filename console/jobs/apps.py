from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "console.jobs"
    label = "jobs"
    verbose_name = "Embedding jobs"

    # The tasks (and a starting worker's nudging every active job's runners) are found by
    # Celery's autodiscovery; everything else sends them by name (dispatch.py).
