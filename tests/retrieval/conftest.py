from __future__ import annotations

import pytest

from services.config import Settings
from services.graph.store import GraphStore
from services.retrieval.service import RetrievalService


@pytest.fixture
def retrieval(clean_graph: GraphStore, settings: Settings) -> RetrievalService:
    return RetrievalService(clean_graph, settings)
