"""Fixtures of the community tests (helpers live in community_graphs.py)."""

from __future__ import annotations

import logging

import pytest

from services.config import Settings


@pytest.fixture(autouse=True)
def _quiet_neo4j_notifications() -> None:
    # A fresh database warns about every label and property not created yet.
    logging.getLogger("neo4j.notifications").setLevel(logging.ERROR)


@pytest.fixture
def community_settings(stack: Settings) -> Settings:
    """The session settings (a copy, so that a test can change clustering knobs)."""
    return stack.model_copy()
