"""The Flask application factory of the REST API (``/api/v1``) and its documentation."""

from __future__ import annotations

from flask import Flask

from services.api.blueprints.communities import communities_bp
from services.api.blueprints.curation import curation_bp
from services.api.blueprints.docs import docs_bp
from services.api.blueprints.health import health_bp
from services.api.blueprints.images import images_bp
from services.api.blueprints.jobs import jobs_bp
from services.api.blueprints.search import search_bp
from services.api.context import install_context
from services.api.errors import register_error_handlers
from services.auth.guard import install_access_control, install_cors
from services.config import Settings, get_settings
from services.dashboard import register_dashboard

BLUEPRINTS = (search_bp, images_bp, curation_bp, communities_bp, jobs_bp, health_bp, docs_bp)
SETTINGS_CONFIG_KEY = "MEDGRAPH_SETTINGS"


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.api_max_upload_bytes
    app.config[SETTINGS_CONFIG_KEY] = settings
    app.json.sort_keys = False  # type: ignore[attr-defined]
    context = install_context(app, settings)
    register_error_handlers(app)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    register_dashboard(app)  # the web page at /dashboard/ (services/dashboard)
    # Access control (services/auth) is installed here, once for every route; each view already
    # declares the scope it needs through @operation(scope=...) (services/api/routing.py).
    install_access_control(app, lambda: context.store, settings.api_rate_limit_per_minute)
    install_cors(app, settings.api_cors_origins)
    return app
