"""Small helpers shared by test folders (fixtures live in conftest.py files)."""

from __future__ import annotations

from flask.testing import FlaskClient

from services.auth.api_keys import create_api_key
from services.graph.store import GraphStore


def authorise(
    client: FlaskClient, store: GraphStore, scopes: tuple[str, ...] = ("read", "write")
) -> str:
    """Gives a Flask test client a fresh API key (keys live in the graph, so wipes remove them)."""
    token = create_api_key(store, "tests", scopes).token  # type: ignore[arg-type]
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return token
