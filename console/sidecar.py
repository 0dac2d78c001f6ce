"""The console's client of the inference sidecar it is configured with."""

from __future__ import annotations

from django.conf import settings

from inference.client import InferenceClient


def sidecar_client(timeout: float) -> InferenceClient:
    """A client of ``settings.INFERENCE_URL`` whose calls give up after ``timeout`` seconds."""
    return InferenceClient(settings.INFERENCE_URL, settings.INFERENCE_TOKEN, timeout=timeout)
