"""URLs of the Jobs page."""

from __future__ import annotations

from django.urls import path

from console.jobs import views

app_name = "jobs"
urlpatterns = [
    path("", views.job_list, name="list"),
    path("new/", views.job_create, name="create"),
    path("<int:pk>/", views.job_detail, name="detail"),
    path("<int:pk>/pause/", views.job_pause, name="pause"),
    path("<int:pk>/resume/", views.job_resume, name="resume"),
    path("<int:pk>/retry/", views.job_retry, name="retry"),
    path("<int:pk>/recount/", views.job_recount, name="recount"),
    path("<int:pk>/model/", views.job_change_model, name="change_model"),
    path("<int:pk>/embed-on/", views.job_embed_on, name="embed_on"),
    path("<int:pk>/delete/", views.job_delete, name="delete"),
]
