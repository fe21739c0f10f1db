"""Access control, checked over every route the app has: a new route cannot escape."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from werkzeug.routing import Rule

from services.api import create_app
from services.auth.api_keys import ApiKeyVerifier, create_api_key, revoke_api_key
from services.auth.guard import PUBLIC, required_scope
from services.config import Settings
from services.graph.store import GraphStore

# Routes that must stay open: liveness/readiness, the API description and its docs page, and the
# dashboard's static page (it fetches data with the user's key).
EXPECTED_PUBLIC = re.compile(
    r"^/api/v1/(health|ready|openapi\.json)$|^/api/docs|^/api/static/|^/dashboard/|^/$"
)


@pytest.fixture(scope="module")
def app(stack: Settings, graph_store: GraphStore) -> Flask:
    # These tests fail authentication hundreds of times from one address; the per-address
    # limit of failures is tested below with its own app.
    application = create_app(stack.model_copy(update={"api_auth_failures_per_minute": 0}))
    application.config["TESTING"] = False
    return application


def data_rules(app: Flask) -> list[Rule]:
    return [rule for rule in app.url_map.iter_rules()
            if required_scope(app, rule.endpoint) != PUBLIC]  # fmt: skip


def concrete_path(rule: Rule) -> str:
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", lambda m: "1" if "id" in m.group(1) else "x", rule.rule)


def test_public_routes_are_only_the_expected_ones(app: Flask) -> None:
    for rule in app.url_map.iter_rules():
        if required_scope(app, rule.endpoint) == PUBLIC:
            assert EXPECTED_PUBLIC.search(rule.rule), f"{rule.rule} is open to anyone"


@pytest.mark.parametrize(
    "header", [None, "Bearer nonsense", "Bearer mg_000000000000_" + "a" * 43, "Basic dXNlcjpwYXNz"]
)
def test_every_data_route_needs_a_valid_key(app: Flask, header: str | None) -> None:
    client = app.test_client()
    rules = data_rules(app)
    assert len(rules) >= 10
    for rule in rules:
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            headers = {"Authorization": header} if header else {}
            response = client.open(concrete_path(rule), method=method, headers=headers)
            assert response.status_code == 401, (method, rule.rule, response.status_code)
            assert response.is_json and "API key" in response.get_json()["error"]["message"]


def test_a_read_key_cannot_write_but_can_read(app: Flask, graph_store: GraphStore) -> None:
    token = create_api_key(graph_store, "reader", ("read",)).token
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    write_rules = [
        rule for rule in data_rules(app) if required_scope(app, rule.endpoint) == "write"
    ]
    assert write_rules, "no write routes found: the jobs endpoints must need a write key"
    declared = {(method, rule.rule) for rule in write_rules for method in rule.methods or ()}
    # Deleting, relabelling and the audit trail (issue 15) are among them.
    assert {
        ("DELETE", "/api/v1/images/<key>"),
        ("PATCH", "/api/v1/images/<key>"),
        ("POST", "/api/v1/patients/delete"),
        ("GET", "/api/v1/audit"),
    } <= declared
    for rule in write_rules:
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            response = client.open(concrete_path(rule), method=method, json={})
            assert response.status_code == 403, (method, rule.rule, response.status_code)
    for rule in data_rules(app):
        if required_scope(app, rule.endpoint) == "read" and "GET" in (rule.methods or ()):
            assert client.get(concrete_path(rule)).status_code not in (401, 403), rule.rule


def test_revoked_key_is_refused(app: Flask, graph_store: GraphStore) -> None:
    issued = create_api_key(graph_store, "short-lived", ("read",))
    client = app.test_client()
    headers = {"Authorization": f"Bearer {issued.token}"}
    assert client.get("/api/v1/communities", headers=headers).status_code != 401
    revoke_api_key(graph_store, issued.key.id)
    assert client.get("/api/v1/communities", headers=headers).status_code == 401


def test_keys_are_stored_hashed(graph_store: GraphStore) -> None:
    issued = create_api_key(graph_store, "hash-check", ("read", "write"))
    stored = graph_store.run_text(
        "MATCH (k:ApiKey {id: $id}) RETURN properties(k) AS p", id=issued.key.id
    )[0]["p"]
    assert issued.token not in {str(value) for value in stored.values()}
    assert ApiKeyVerifier(graph_store).verify(issued.token) == issued.key


def test_cors_is_off_by_default_and_on_when_configured(stack: Settings) -> None:
    closed = create_app(stack).test_client()
    response = closed.get("/api/v1/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
    opened = create_app(stack.model_copy(update={"api_cors_origins": ["https://ok.example"]}))
    client = opened.test_client()
    allowed = client.get("/api/v1/health", headers={"Origin": "https://ok.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://ok.example"
    other = client.get("/api/v1/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_rate_limit_answers_429(stack: Settings, graph_store: GraphStore) -> None:
    limited = create_app(stack.model_copy(update={"api_rate_limit_per_minute": 3}))
    client = limited.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = (
        f"Bearer {create_api_key(graph_store, 'limited', ('read',)).token}"
    )
    statuses = [client.get("/api/v1/communities").status_code for _ in range(5)]
    assert statuses[:3] == [200, 200, 200] and statuses[3:] == [429, 429]


def test_failed_authentications_are_limited_per_address(
    stack: Settings, graph_store: GraphStore
) -> None:
    limited = create_app(stack.model_copy(update={"api_auth_failures_per_minute": 5}))
    limited.config["TESTING"] = False
    good = create_api_key(graph_store, "limited", ("read",)).token
    attacker = limited.test_client()
    attacker.environ_base["REMOTE_ADDR"] = "10.0.0.66"
    statuses = [
        attacker.get(
            "/api/v1/communities", headers={"Authorization": f"Bearer mg_{i:012x}_{'b' * 43}"}
        ).status_code
        for i in range(12)
    ]
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}, statuses
    refused = attacker.get("/api/v1/communities", headers={"Authorization": "Bearer nonsense"})
    assert (
        refused.status_code == 429
        and "failed authentications" in refused.get_json()["error"]["message"]
    )
    assert refused.headers["Retry-After"]
    # A valid key is checked first: the same address's failures never throttle it (issue 26).
    allowed = attacker.get("/api/v1/communities", headers={"Authorization": f"Bearer {good}"})
    assert allowed.status_code == 200
    # Failures naming one key id are counted for that id too, from any address.
    good_id = good.split("_")[1]
    by_id = []
    for index in range(8):
        guesser = limited.test_client()
        guesser.environ_base["REMOTE_ADDR"] = f"10.0.1.{index}"
        by_id.append(guesser.get(
            "/api/v1/communities", headers={"Authorization": f"Bearer mg_{good_id}_{'c' * 43}"}
        ).status_code)  # fmt: skip
    assert by_id[:5] == [401] * 5 and set(by_id[5:]) == {429}, by_id
    other = limited.test_client()
    other.environ_base["REMOTE_ADDR"] = "10.0.0.7"
    assert (
        other.get("/api/v1/communities", headers={"Authorization": f"Bearer {good}"}).status_code
        == 200
    )
    assert limited.test_client().get("/api/v1/health").status_code == 200  # public routes stay open


def test_only_the_bearer_header_carries_a_key(app: Flask, graph_store: GraphStore) -> None:
    token = create_api_key(graph_store, "forms", ("read",)).token
    client = app.test_client()
    client.set_cookie("medgraph_key", token)
    assert client.get("/api/v1/communities").status_code == 401
    assert (
        app.test_client().get("/api/v1/communities", headers={"X-API-Key": token}).status_code
        == 401
    )
    assert (
        app.test_client()
        .get("/api/v1/communities", headers={"Authorization": f"Bearer {token}"})
        .status_code
        == 200
    )
