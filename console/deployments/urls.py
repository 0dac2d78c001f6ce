"""URLs of deployments and of the models and licenses pages."""

from __future__ import annotations

from django.urls import path

from console.deployments import views

app_name = "deployments"
urlpatterns = [
    path("deployments/", views.deployment_list, name="list"),
    path("deployments/<int:pk>/", views.deployment_detail, name="detail"),
    path("deployments/<int:pk>/cancel/", views.deployment_cancel, name="cancel"),
    path("deployments/<int:pk>/retry/", views.deployment_retry, name="retry"),
    path("models/", views.model_list, name="models"),
    path("models/add/", views.model_add, name="add"),
    path("models/<str:uri>/", views.model_detail, name="model"),
    path("models/<str:uri>/deploy/", views.model_deploy, name="deploy"),
    path("models/<str:uri>/disable/", views.model_disable, name="disable"),
    path("models/<str:uri>/remove/", views.model_remove, name="remove"),
]
