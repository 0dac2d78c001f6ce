"""The console's URL map."""

from django.contrib import admin
from django.urls import include, path

from console import views

urlpatterns = [
    path("", views.overview, name="overview"),
    path("parameters/", include("serverparams.urls")),
    path("", include("console.deployments.urls")),
    path("soon/<slug:section>/", views.coming_soon, name="coming_soon"),
    path("notifications/", views.notifications, name="notifications"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]
