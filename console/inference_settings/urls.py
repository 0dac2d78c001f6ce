"""URLs of the inference settings form."""

from __future__ import annotations

from django.urls import path

from console.inference_settings import views

app_name = "inference_settings"
urlpatterns = [
    path("", views.settings_form, name="form"),
]
