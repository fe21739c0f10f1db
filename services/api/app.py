"""The Flask application factory of the REST API (``/api/v1``) and its documentation."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, Response, request
from werkzeug.routing import RequestRedirect

from services.api.blueprints.communities import communities_bp
from services.api.blueprints.curation import curation_bp
from services.api.blueprints.dicomweb import dicomweb_bp
from services.api.blueprints.docs import docs_bp
from services.api.blueprints.health import health_bp
from services.api.blueprints.images import images_bp
from services.api.blueprints.jobs import jobs_bp
from services.api.blueprints.search import search_bp
from services.api.context import install_context
from services.api.errors import error_response, register_error_handlers
from services.api.forms import ApiRequest
from services.auth.guard import install_access_control, install_cors
from services.config import Settings, get_settings
from services.dashboard import register_dashboard

BLUEPRINTS = (search_bp, images_bp, curation_bp, communities_bp, jobs_bp, health_bp, docs_bp)
BLUEPRINTS += (dicomweb_bp,)  # DICOMweb, issue 25
SETTINGS_CONFIG_KEY = "MEDGRAPH_SETTINGS"


def no_host_redirects() -> Response | None:
    """Werkzeug answers a missing trailing slash with a redirect to an absolute URL built from
    the request's Host header, before any view or access check runs. The redirect is kept for
    pages (``/dashboard`` -> ``/dashboard/``) but its Location is the path alone; anything else
    the router would redirect is a JSON 404."""
    redirect = request.routing_exception
    if not isinstance(redirect, RequestRedirect):
        return None
    target = urlsplit(redirect.new_url)
    if "//" in request.path or not target.path.startswith("/") or target.path.startswith("//"):
        return error_response(404, "the requested URL was not found on this server")
    response = Response(status=308)
    response.headers["Location"] = target.path + (f"?{target.query}" if target.query else "")
    return response


def no_sniffing(response: Response) -> Response:
    """Every answer is what its Content-Type says; browsers must not guess (a JSON error body
    echoing input must never run as a page)."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    app = Flask(__name__, static_folder=None)
    app.request_class = ApiRequest  # form-limit errors that name the limit hit (issue 26)
    # "//" in a path is a 404, not a redirect to the merged path (issue 16).
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = settings.api_max_upload_bytes
    app.config[SETTINGS_CONFIG_KEY] = settings
    app.json.sort_keys = False  # type: ignore[attr-defined]
    context = install_context(app, settings)
    register_error_handlers(app)
    app.before_request(no_host_redirects)
    app.after_request(no_sniffing)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    register_dashboard(app)  # the web page at /dashboard/ (services/dashboard)
    # Access control (services/auth) is installed here, once for every route; each view already
    # declares the scope it needs through @operation(scope=...) (services/api/routing.py).
    install_access_control(
        app,
        lambda: context.store,
        settings.api_rate_limit_per_minute,
        settings.api_auth_failures_per_minute,
        settings.api_key_cache_s,
    )
    install_cors(app, settings.api_cors_origins)
    return app
