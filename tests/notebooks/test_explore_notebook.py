"""Issue 25, acceptance 3: the data scientist's notebook runs end to end against the test stack
(real Neo4j with GDS, a graph of bundled images with their labels, clustered) and produces its
figures and tables. The executed copy is left in test-artifacts/ for a look."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from services.communities.job import run_clustering
from services.config import REPO_ROOT, Settings
from services.graph.store import GraphStore
from tests.support import ingest_bundled

pytestmark = [pytest.mark.neo4j, pytest.mark.slow]

NOTEBOOK = REPO_ROOT / "notebooks" / "explore.ipynb"
IMAGES = 240


@pytest.fixture
def clustered_graph(clean_graph: GraphStore, settings: Settings) -> GraphStore:
    ingest_bundled(clean_graph, settings, IMAGES)
    summary = run_clustering(clean_graph, settings, algorithm="leiden")
    assert summary.community_count > 1
    return clean_graph


def outputs_of(notebook: nbformat.NotebookNode, kind: str) -> list[dict]:
    return [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if kind in output.get("data", {})
    ]


def test_the_notebook_runs_end_to_end_and_draws_its_figures(
    clustered_graph: GraphStore, artifacts_dir: Path
) -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel inherits this process's environment: the test slot's MEDGRAPH_ settings.
    NotebookClient(
        notebook, timeout=300, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()  # fmt: skip
    nbformat.write(notebook, artifacts_dir / "explore.executed.ipynb")
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    assert len(outputs_of(notebook, "image/png")) == 2  # sizes and purity; the neighbourhood
    tables = "\n".join(output["data"]["text/html"] for output in outputs_of(notebook, "text/html"))
    assert "purity" in tables and "top_finding" in tables  # the community table
    assert "precision_at_k" in tables  # precision@K per community
    assert "score" in tables  # PageRank streamed from the GDS projection
    # No projection is left behind in GDS's catalogue.
    assert not clustered_graph.run_text("CALL gds.graph.list() YIELD graphName RETURN graphName")
