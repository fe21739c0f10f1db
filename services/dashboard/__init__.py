"""The single-page web dashboard, served by the Flask API app (see README.md here)."""

from services.dashboard.blueprint import dashboard_bp, dashboard_url, register_dashboard

__all__ = ["dashboard_bp", "dashboard_url", "register_dashboard"]
