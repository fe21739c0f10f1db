"""The OpenAPI document and a Swagger UI page served from vendored files (no CDN)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, render_template

from services.api.openapi import openapi_document
from services.api.routing import operation

docs_bp = Blueprint(
    "docs",
    __name__,
    static_folder="../static",
    static_url_path="/api/static",
    template_folder="../templates",
)
OPENAPI_PATH = "/api/v1/openapi.json"


@operation(
    docs_bp,
    OPENAPI_PATH,
    scope="public",
    summary="This API's OpenAPI 3.1 document",
    tag="docs",
)
def openapi_json() -> Response:
    document = current_app.extensions.get("medgraph_openapi")
    if document is None:
        document = current_app.extensions["medgraph_openapi"] = openapi_document(current_app)
    return jsonify(document)


@operation(
    docs_bp,
    "/api/docs",
    scope="public",
    summary="Interactive API documentation (Swagger UI)",
    tag="docs",
    media_type="text/html",
)
def docs_page() -> str:
    return render_template("api_docs.html", openapi_url=OPENAPI_PATH)
