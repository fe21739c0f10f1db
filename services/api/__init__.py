"""The REST API: ``create_app(settings=None)`` builds the Flask application."""

from services.api.app import create_app

__all__ = ["create_app"]
