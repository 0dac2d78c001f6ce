from django.apps import AppConfig


class InferenceSettingsConfig(AppConfig):
    name = "console.inference_settings"
    label = "inference_settings"
    verbose_name = "Inference settings"
