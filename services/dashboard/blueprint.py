"""Serves the dashboard page and its static files; the page talks to /api/v1 over HTTP only.

The page and its assets are public (no API key): they hold no data. Every data request the page
makes carries the key the user typed, so the API's own access rules apply unchanged.
"""

from __future__ import annotations

from flask import Blueprint, Flask, current_app, redirect, render_template, url_for
from werkzeug.wrappers import Response

from services.auth.guard import public
from services.config import Settings, get_settings

DASHBOARD_PATH = "/dashboard/"
API_BASE = "/api/v1"
API_CONTEXT_EXTENSION = "medgraph"

dashboard_bp = Blueprint(
    "dashboard",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/dashboard/static",
)


# The page loads its own scripts, styles and thumbnails (blob: URLs of fetched images) and
# talks only to this server; it may not be framed (clickjacking) or sniffed into another type.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@dashboard_bp.after_request
def security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def neo4j_browser_url(settings: Settings) -> str:
    """Where the user's browser reaches Neo4j Browser (not where the API reaches Bolt)."""
    if settings.dashboard_neo4j_browser_url:
        return settings.dashboard_neo4j_browser_url
    return f"http://{settings.neo4j_host}:{settings.neo4j_http_port}/browser/"


def dashboard_url(settings: Settings) -> str:
    """The address to print for users (a wildcard listen address is shown as loopback)."""
    host = settings.api_host if settings.api_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return f"http://{host}:{settings.api_port}{DASHBOARD_PATH}"


def _settings() -> Settings:
    # The API app factory keeps its settings on its context (app.extensions["medgraph"]).
    context = current_app.extensions.get(API_CONTEXT_EXTENSION)
    settings = getattr(context, "settings", None)
    return settings if isinstance(settings, Settings) else get_settings()


@dashboard_bp.get(DASHBOARD_PATH)
@public
def index() -> str:
    settings = _settings()
    page_config = {
        "apiBase": API_BASE,
        "neo4jBrowserUrl": neo4j_browser_url(settings),
        "defaultK": settings.default_k,
        "maxK": settings.search_max_k,
        # The search view's default order follows the API's (the search_rerank setting).
        "defaultRerank": settings.search_rerank,
    }
    return render_template("dashboard/index.html", page_config=page_config)


@public
def _redirect_to_dashboard() -> Response:
    return redirect(url_for("dashboard.index"))


def register_dashboard(app: Flask) -> None:
    """Mounts the dashboard at /dashboard/ and, when nothing else claims it, redirects / there."""
    app.register_blueprint(dashboard_bp)
    if not any(rule.rule == "/" for rule in app.url_map.iter_rules()):
        app.add_url_rule("/", "dashboard_root", _redirect_to_dashboard)
