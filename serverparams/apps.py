from django.apps import AppConfig


class ServerParamsConfig(AppConfig):
    name = "serverparams"
    verbose_name = "Server parameters"
