"""The top bar's search: pages, parameters (from the managed server), models, deployments."""

from __future__ import annotations

import pytest
from django.test import Client

from console.deployments.models import Deployment
from serverparams.server import ManagedServer


def results(client: Client, query: str) -> str:
    response = client.get("/search/", {"q": query}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    return response.content.decode()


def test_parameters_open_the_blade_filtered_on_their_name(
    server: ManagedServer, reader_client: Client
) -> None:
    page = results(reader_client, "work_mem")
    assert 'href="/parameters/?q=work_mem"' in page
    assert 'href="/parameters/?q=maintenance_work_mem"' in page
    # Parameters named by the query come before those that only mention it.
    assert page.index("?q=work_mem") < page.index("?q=maintenance_work_mem")


def test_pages_models_and_deployments_are_found(
    server: ManagedServer, admin_client: Client
) -> None:
    deployment = Deployment.objects.create(model_uri="all-MiniLM-L6-v2:v1", state="failed")
    page = results(admin_client, "minilm")
    assert 'href="/models/all-MiniLM-L6-v2:v1/"' in page
    assert f'href="/deployments/{deployment.pk}/"' in page
    assert 'href="/deployments/"' in results(admin_client, "deploy")
    assert f'href="/deployments/{deployment.pk}/"' in results(admin_client, f"#{deployment.pk}")


def test_wildcards_in_the_query_are_taken_literally(
    server: ManagedServer, reader_client: Client
) -> None:
    assert "Nothing matches" in results(reader_client, "%_%zzz")


def test_an_empty_query_lists_nothing(reader_client: Client) -> None:
    assert results(reader_client, "   ").strip() == ""


def test_an_unreachable_server_still_finds_the_rest(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANAGED_DATABASE_URL", "postgresql://postgres@127.0.0.1:9/postgres")
    page = results(admin_client, "models")
    assert 'href="/models/"' in page
    page = results(admin_client, "shared_buffers")
    assert "the managed server cannot be reached" in page


def test_search_needs_a_sign_in(client: Client) -> None:
    response = client.get("/search/", {"q": "work_mem"})
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
