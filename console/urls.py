"""The console's URL map."""

from django.contrib import admin
from django.urls import include, path

from console import views

urlpatterns = [
    path("", views.overview, name="overview"),
    path("parameters/", include("serverparams.urls")),
    path("", include("console.deployments.urls")),
    path("settings/", include("console.inference_settings.urls")),
    path("playground/", include("console.playground.urls")),
    path("jobs/", include("console.jobs.urls")),
    path("notifications/", views.notifications, name="notifications"),
    path("search/", views.search, name="search"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]
