"""Modularity-based communities of the image graph, stored in Neo4j and kept fresh at ingest.

Public API: ``run_clustering`` (a full run), ``assign_new_images`` (after ingest),
``staleness`` / ``needs_full_rerun``, ``match_community_ids`` (the stable-id rule).
"""

from services.communities.detection import ALGORITHMS, ClusteringError, ClusteringInProgress
from services.communities.freshness import (
    Staleness,
    UnknownImagesError,
    assign_new_images,
    needs_full_rerun,
    staleness,
)
from services.communities.identities import match_community_ids
from services.communities.job import ClusteringSummary, run_clustering

__all__ = [
    "ALGORITHMS",
    "ClusteringError",
    "ClusteringInProgress",
    "ClusteringSummary",
    "Staleness",
    "UnknownImagesError",
    "assign_new_images",
    "match_community_ids",
    "needs_full_rerun",
    "run_clustering",
    "staleness",
]
