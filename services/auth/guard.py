"""The one place where every request's API key, scope and rate are checked.

Each view declares what it needs with ``@requires("read")``, ``@requires("write")`` or
``@public``. A view that declares nothing needs a write key: a new route that forgets to
declare its scope fails closed, not open.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, current_app, g, jsonify, request

from services.auth.api_keys import ApiKey, ApiKeyVerifier, Scope, token_key_id
from services.graph.store import TRANSIENT_NEO4J_ERRORS, GraphStore

View = TypeVar("View", bound=Callable[..., Any])
MAX_BUCKETS = 100_000
PUBLIC = "public"


def requires(scope: Scope) -> Callable[[View], View]:
    def mark(view: View) -> View:
        view.required_scope = scope  # type: ignore[attr-defined]
        return view

    return mark


def public(view: View) -> View:
    view.required_scope = PUBLIC  # type: ignore[attr-defined]
    return view


def required_scope(app: Flask, endpoint: str) -> str:
    if endpoint == "static" or endpoint.endswith(".static"):
        return PUBLIC
    view = app.view_functions[endpoint]
    return getattr(view, "required_scope", "write")


def presented_token() -> str | None:
    """The one accepted form: ``Authorization: Bearer <token>`` (the dashboard sends it too).

    No cookie: a cookie would be sent by the browser on cross-site requests (CSRF)."""
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return None


class RateLimiter:
    """A token bucket per caller (key id, or address when anonymous)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def allow(self, caller: str, cost: float = 1.0) -> bool:
        """Takes ``cost`` tokens when the bucket has one left; ``cost=0`` only looks."""
        if self.per_minute <= 0:
            return True
        now = time.monotonic()
        rate = self.per_minute / 60.0
        with self.lock:
            if len(self.buckets) > MAX_BUCKETS:
                # Full buckets carry no state; drop them so many addresses cannot grow the map.
                self.buckets = {
                    name: (tokens, last)
                    for name, (tokens, last) in self.buckets.items()
                    if tokens + (now - last) * rate < self.per_minute
                }
            tokens, last = self.buckets.get(caller, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * rate)
            if tokens < 1.0:
                self.buckets[caller] = (tokens, now)
                return False
            self.buckets[caller] = (tokens - cost, now)
            return True


def _error(status: int, message: str, **headers: str) -> Any:
    response = jsonify({"error": {"status": status, "message": message}})
    response.status_code = status
    response.headers.update(headers)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="medgraph"'
    return response


def install_access_control(
    app: Flask,
    store_factory: Callable[[], GraphStore],
    rate_limit_per_minute: int,
    auth_failures_per_minute: int = 30,
    key_cache_s: float = 0.5,
) -> None:
    limiter = RateLimiter(rate_limit_per_minute)
    # Failed authentications, counted per client address and per key id a token names (0 =
    # off). The key is always checked first (in memory, ApiKeyVerifier), so a valid key is
    # never throttled by others' failures, not even from its own address (behind a reverse
    # proxy every client shares one); once either bucket is spent, failures answer 429.
    failures_by_address = RateLimiter(auth_failures_per_minute)
    failures_by_key_id = RateLimiter(auth_failures_per_minute)

    @app.before_request
    def check_access() -> Any:
        if request.endpoint is None or request.method == "OPTIONS":
            return None  # unknown URL: the 404 handler answers; CORS preflights carry no key
        scope = required_scope(current_app, request.endpoint)
        key: ApiKey | None = None
        address = f"addr:{request.remote_addr}"
        if scope != PUBLIC:
            token = presented_token()
            try:
                key = ApiKeyVerifier(store_factory(), key_cache_s).verify(token)
            except TRANSIENT_NEO4J_ERRORS:
                return _error(503, "cannot check the API key: the graph database is unavailable")
            if key is None:
                over_address = not failures_by_address.allow(address)
                key_id = token_key_id(token)
                over_key_id = key_id is not None and not failures_by_key_id.allow(key_id)
                if over_address or over_key_id:
                    return _error(
                        429, "too many failed authentications; retry later",
                        **{"Retry-After": "60"},
                    )  # fmt: skip
                return _error(401, "a valid API key is required (Authorization: Bearer <key>)")
            if not key.allows(scope):  # type: ignore[arg-type]
                return _error(403, f"this API key lacks the '{scope}' scope")
        g.api_key = key
        caller = key.id if key else address
        if not limiter.allow(caller):
            return _error(429, "rate limit exceeded; retry later", **{"Retry-After": "1"})
        return None


def install_cors(app: Flask, allowed_origins: list[str]) -> None:
    """CORS stays off (no headers at all) unless origins are configured."""
    if not allowed_origins:
        return
    allowed = set(allowed_origins)

    @app.after_request
    def add_cors_headers(response: Any) -> Any:
        origin = request.headers.get("Origin")
        if origin in allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        return response
