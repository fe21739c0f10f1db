"""Liveness (the process answers) and readiness (Neo4j, Redis and Celery workers answer)."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, jsonify

from services import jobs
from services.api.context import api_context
from services.api.routing import operation
from services.api.schemas import ComponentCheck, Health, Readiness

health_bp = Blueprint("health", __name__, url_prefix="/api/v1")
PROBE_TIMEOUT_S = 2.0


@operation(health_bp, "/health", scope="public", summary="Liveness", tag="health", response=Health)
def health() -> Health:
    return Health(status="ok")


@operation(
    health_bp,
    "/ready",
    scope="public",
    summary="Readiness: Neo4j, Redis and at least one Celery worker answer (503 otherwise)",
    tag="health",
    response=Readiness,
    errors=(503,),
)
def ready() -> Response:
    checks = {
        "neo4j": check_neo4j(),
        "redis": check_redis(),
        "workers": check_workers(),
    }
    readiness = Readiness(ready=all(check.ok for check in checks.values()), checks=checks)
    response = jsonify(readiness.model_dump(mode="json"))
    response.status_code = 200 if readiness.ready else 503
    return response


def check_neo4j() -> ComponentCheck:
    try:
        record = api_context().store.query("health")[0]
        return ComponentCheck(ok=True, detail=f"APOC {record['apoc']}, GDS {record['gds']}")
    except Exception as problem:  # any failure means "not ready", reported in words
        return ComponentCheck(ok=False, detail=f"{type(problem).__name__}: {problem}"[:300])


def check_redis() -> ComponentCheck:
    url = api_context().settings.broker_url
    try:
        client = redis.Redis.from_url(
            url, socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S
        )
        client.ping()
        return ComponentCheck(ok=True, detail="PING answered")
    except Exception as problem:
        return ComponentCheck(ok=False, detail=f"{type(problem).__name__}: {problem}"[:300])


def check_workers() -> ComponentCheck:
    try:
        replies = jobs.ping(api_context().settings, timeout_s=PROBE_TIMEOUT_S)
    except Exception as problem:
        return ComponentCheck(ok=False, detail=f"{type(problem).__name__}: {problem}"[:300])
    if not replies:
        return ComponentCheck(ok=False, detail="no Celery worker answered a ping")
    names = sorted(name for reply in replies for name in reply)
    return ComponentCheck(ok=True, detail=f"{len(names)} worker(s): {', '.join(names)}")
