"""The migration that seals source paths stored in clear before issue 26 (a file's path names
its patient in NIH-style names; services/privacy.py). Idempotent: sealed paths are left alone,
so running it at every start of `medgraph serve` costs one query once all are sealed."""

from __future__ import annotations

from services.config import Settings
from services.graph.store import GraphStore
from services.privacy import SEALED_PREFIX, seal_source
from services.secrets import patient_key_secret

BATCH = 1000


def seal_stored_sources(store: GraphStore, settings: Settings) -> int:
    """Seals every clear ``source`` of an ``:Image``; returns how many it sealed."""
    secret = patient_key_secret(settings)
    sealed = 0
    while True:
        rows = store.query("source_unsealed", prefix=SEALED_PREFIX, limit=BATCH)
        if not rows:
            return sealed
        store.query(
            "source_seal",
            rows=[
                {"key": row["key"], "source": seal_source(secret, row["source"])} for row in rows
            ],
        )
        sealed += len(rows)
