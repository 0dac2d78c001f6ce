"""URLs of the Server parameters blade."""

from __future__ import annotations

from django.urls import path

from serverparams import views

app_name = "serverparams"
urlpatterns = [
    path("", views.blade, name="blade"),
    path("save/", views.save, name="save"),
    path("reset-all/", views.reset_all_dialog, name="reset_all"),
    path("restart/", views.restart_server, name="restart"),
    path("history/", views.history, name="history"),
]
