"""The console's URL map."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from console import views

# Signing in and out and changing one's own password; not Django's password reset by e-mail,
# which the console has no mail server for and which would let anyone have mail sent.
accounts = [
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("password_change/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path(
        "password_change/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
]

urlpatterns = [
    path("", views.overview, name="overview"),
    path("parameters/", include("serverparams.urls")),
    path("", include("console.deployments.urls")),
    path("settings/", include("console.inference_settings.urls")),
    path("playground/", include("console.playground.urls")),
    path("jobs/", include("console.jobs.urls")),
    path("notifications/", views.notifications, name="notifications"),
    path("search/", views.search, name="search"),
    path("accounts/", include(accounts)),
    path("admin/", admin.site.urls),
]
