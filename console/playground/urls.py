"""URLs of the playground (embedding, reranking) and its semantic search demo."""

from __future__ import annotations

from django.urls import path

from console.playground import views

app_name = "playground"
urlpatterns = [
    path("", views.playground, name="page"),
    path("embed/", views.embed, name="embed"),
    path("rank/", views.rank, name="rank"),
    path("demo/setup/", views.demo_setup, name="setup"),
    path("demo/search/", views.demo_search, name="search"),
]
