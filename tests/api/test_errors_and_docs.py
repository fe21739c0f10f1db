"""Every route answers errors in JSON; the OpenAPI document and the docs page are complete."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.exceptions import HTTPException

from services.api import create_app
from services.api.routing import Operation
from services.config import Settings
from services.graph.store import GraphStore
from tests.api.conftest import ApiGraph
from tests.support import authorise

pytestmark = pytest.mark.neo4j
ALL_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def concrete(rule: str, key: str) -> str:
    path = re.sub(r"<int(\([^)]*\))?:\w+>", "123456", rule)
    return re.sub(r"<\w+>", key, path)


def assert_json_error(response, status: int | None = None) -> None:  # type: ignore[no-untyped-def]
    assert response.mimetype == "application/json", (response.status_code, response.data[:200])
    body = response.get_json()
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["error"]["status"] == response.status_code
    if status is not None:
        assert response.status_code == status


def api_rules(app: Flask) -> list:  # type: ignore[type-arg]
    return [
        rule for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/") and rule.endpoint != "docs.static"
    ]  # fmt: skip


def test_every_route_answers_wrong_methods_and_unknown_urls_in_json(
    app: Flask, client: FlaskClient, api_graph: ApiGraph
) -> None:
    rules = api_rules(app)
    assert len(rules) >= 14
    adapter = app.url_map.bind("localhost")
    for rule in rules:
        path = concrete(rule.rule, api_graph.keys[0])
        for method in sorted(ALL_METHODS - set(rule.methods or ())):
            try:
                adapter.match(path, method)
                continue  # another route takes this method here (GET /jobs/ingest is a job id)
            except HTTPException:
                pass
            response = client.open(path, method=method)
            assert_json_error(response, 405)
    for path in (
        "/api/v1/nothing",
        "/api/v2/search",
        "/api/v1/images/a/b/c",
        "/api/v1/communities/x",
    ):
        assert_json_error(client.get(path), 404)


def test_every_data_route_answers_503_in_json_when_neo4j_is_down(
    api_settings: Settings, api_graph: ApiGraph
) -> None:
    # A real driver pointed at a port where nothing listens: what a Neo4j outage looks like.
    down = create_app(
        api_settings.model_copy(
            update={"neo4j_bolt_port": 1, "neo4j_uri": None, "neo4j_retry_time_s": 0.5}
        )
    )
    client = down.test_client()
    # A well-formed key: checking it needs Neo4j, so the outage shows as 503, not 401.
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer mg_000000000000_" + "x" * 43
    key = api_graph.keys[0]
    requests = [
        ("POST", "/api/v1/search", {"key": key}),
        ("GET", f"/api/v1/images/{key}", None),
        ("GET", f"/api/v1/images/{key}/thumbnail", None),
        ("GET", f"/api/v1/images/{key}/file", None),
        ("GET", f"/api/v1/images/{key}/neighbourhood", None),
        ("GET", "/api/v1/communities", None),
        ("GET", "/api/v1/communities/1", None),
    ]
    for method, path, payload in requests:
        response = client.open(path, method=method, json=payload)
        assert_json_error(response, 503)
    ready = client.get("/api/v1/ready")
    assert ready.status_code == 503 and ready.get_json()["checks"]["neo4j"]["ok"] is False


def test_unexpected_errors_are_json_500(api_settings: Settings) -> None:
    app = create_app(api_settings)

    @app.get("/api/v1/explode")
    def explode() -> str:
        raise RuntimeError("boom with a secret detail")

    client = app.test_client()
    authorise(client, GraphStore.from_settings(api_settings))
    response = client.get("/api/v1/explode")
    assert_json_error(response, 500)
    assert "secret" not in response.get_json()["error"]["message"]


def test_openapi_document_covers_every_route(app: Flask, client: FlaskClient) -> None:
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    document = response.get_json()
    assert document["openapi"].startswith("3.")
    for rule in api_rules(app):
        operation: Operation = app.view_functions[rule.endpoint].operation
        path = re.sub(r"<(?:\w+(?:\([^)]*\))?:)?(\w+)>", r"{\1}", rule.rule)
        entry = document["paths"][path][operation.method.lower()]
        assert entry["x-required-scope"] in ("read", "write", "public")
        assert entry["summary"]
        for status, response_spec in entry["responses"].items():
            if status.startswith(("4", "5")):
                schema = response_spec["content"]["application/json"]["schema"]
                assert "$ref" in schema
    search = document["paths"]["/api/v1/search"]["post"]
    multipart = search["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert multipart["properties"]["file"]["format"] == "binary"
    assert {"k", "strategy", "key", "exclude_same_patient", "finding", "modality", "add"} <= set(
        multipart["properties"]
    )
    schemas = document["components"]["schemas"]
    assert {"SearchResponse", "SearchResult", "ErrorResponse", "ImageDetail"} <= set(schemas)
    refs = set(re.findall(r'"#/components/schemas/(\w+)"', response.get_data(as_text=True)))
    assert refs <= set(schemas), "every $ref resolves"


def test_docs_page_uses_only_vendored_assets(client: FlaskClient) -> None:
    page = client.get("/api/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "http://" not in html and "https://" not in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert len(served.data) > 100


def test_every_route_declares_a_scope(app: Flask) -> None:
    for rule in api_rules(app):
        view = app.view_functions[rule.endpoint]
        scope = getattr(view, "required_scope", None)
        assert scope in ("read", "write", "public"), rule.rule
        assert view.operation.scope == scope
    scopes = {
        rule.rule: app.view_functions[rule.endpoint].required_scope for rule in api_rules(app)
    }
    assert scopes["/api/v1/jobs/ingest"] == "write"
    assert scopes["/api/v1/search"] == "read"
    assert scopes["/api/v1/health"] == "public"
