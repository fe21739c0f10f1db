"""Liveness (the process answers) and readiness (Neo4j, Redis and Celery workers answer)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis
from flask import Blueprint, Response, current_app, jsonify

from services import jobs
from services.api.context import api_context
from services.api.routing import operation
from services.api.schemas import ComponentCheck, Health, Readiness

health_bp = Blueprint("health", __name__, url_prefix="/api/v1")
PROBE_TIMEOUT_S = 2.0
READY_CACHE = "medgraph_ready"


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
    cache = current_app.extensions.get(READY_CACHE)
    if cache is None:
        cache = current_app.extensions.setdefault(
            READY_CACHE, ReadinessCache(api_context().settings.api_ready_cache_s)
        )
    readiness = cache.get(check_all)
    response = jsonify(readiness.model_dump(mode="json"))
    response.status_code = 200 if readiness.ready else 503
    return response


def check_all() -> Readiness:
    checks = {
        "neo4j": check_neo4j(),
        "redis": check_redis(),
        "workers": check_workers(),
    }
    return Readiness(ready=all(check.ok for check in checks.values()), checks=checks)


class ReadinessCache:
    """The last readiness answer, kept ``ttl_s``; one check runs at a time, and while it runs
    other callers get the previous answer: open /ready cannot pile up probes (each waits up to
    PROBE_TIMEOUT_S for worker replies)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._value: Readiness | None = None
        self._at = 0.0
        self._lock = threading.Lock()

    def get(self, check: Callable[[], Readiness]) -> Readiness:
        if self._value is not None and time.monotonic() - self._at < self.ttl_s:
            return self._value
        if self._lock.acquire(blocking=self._value is None):
            try:
                if self._value is None or time.monotonic() - self._at >= self.ttl_s:
                    self._value = check()
                    self._at = time.monotonic()
            finally:
                self._lock.release()
        assert self._value is not None
        return self._value


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
