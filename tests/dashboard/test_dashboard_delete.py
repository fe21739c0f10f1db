"""The image view's delete button: shown to a write key only, and deleting only after an explicit
confirmation. Runs after test_dashboard_browser.py (it deletes one image of the shared graph)."""

from __future__ import annotations

from typing import Any

import pytest

from services.auth.api_keys import create_api_key
from services.dashboard.screenshot import wait_for_view
from services.graph.store import GraphStore
from tests.dashboard.conftest import SeededGraph

pytestmark = [pytest.mark.neo4j, pytest.mark.slow]


def open_image(page: Any, dashboard_url: str, key: str) -> None:
    page.goto(f"{dashboard_url}#/image/{key}")
    assert wait_for_view(page) == "ready"
    page.wait_for_function("() => document.getElementById('view').dataset.canDelete !== undefined")


def stored(store: GraphStore, key: str) -> bool:
    return bool(store.run_text("MATCH (i:Image {key: $key}) RETURN i", key=key))


def test_a_read_key_sees_no_delete_button(
    keyed_page: Any, dashboard_url: str, seeded_graph: SeededGraph
) -> None:
    open_image(keyed_page, dashboard_url, seeded_graph.images[-1].key)
    assert keyed_page.evaluate("document.getElementById('view').dataset.canDelete") == "false"
    assert not keyed_page.is_visible("#image-delete-button")


def test_a_write_key_deletes_after_confirming(
    page: Any, dashboard_url: str, seeded_graph: SeededGraph, graph_store: GraphStore
) -> None:
    token = create_api_key(graph_store, "dashboard-writer", ("read", "write")).token
    page.context.add_init_script(f"sessionStorage.setItem('medgraph.apiKey', {token!r})")
    key = seeded_graph.images[-1].key
    open_image(page, dashboard_url, key)
    assert page.is_visible("#image-delete-button")
    assert not page.is_visible("#image-delete-confirm-button")
    page.click("#image-delete-button")  # first click only asks
    assert page.is_visible("#image-delete-confirm-button")
    page.click("#image-delete-cancel")
    assert stored(graph_store, key) and page.is_visible("#image-delete-button")
    page.click("#image-delete-button")
    page.click("#image-delete-confirm-button")
    page.wait_for_function(f"() => document.getElementById('view').dataset.deleted === {key!r}")
    assert "Deleted" in page.inner_text("#image-delete-status")
    assert not stored(graph_store, key)
    # /ready answers 503 here (these tests run no Celery worker); nothing else may fail.
    assert not [error for error in page.console_errors if "503" not in error]
