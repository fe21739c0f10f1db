"""The Celery queue names, importable without building the Celery app (which reads the
settings): the API sends jobs through its own app object on these queues."""

from __future__ import annotations

EMBED_QUEUE = "embed"
GRAPH_QUEUE = "graph"
QUEUES = (EMBED_QUEUE, GRAPH_QUEUE)
