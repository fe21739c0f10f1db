"""The Celery application of medgraph: Redis broker and result store, two queues.

- ``embed``: image decoding and DenseNet-121 image codes (CPU or GPU workers). Each worker process
  loads the model once, lazily on its first task, i.e. after the prefork pool has forked.
- ``graph``: Neo4j writes (nodes, SIMILAR edges) and the kNN edge building.

Start a worker with ``medgraph worker`` or, equivalently::

    celery -A workers.celery_app worker -Q embed,graph -c 2 --loglevel info

Reliability: tasks are acknowledged only after they finish (``acks_late``) and go back to the
queue when their worker process dies (``reject_on_worker_lost``); every task is idempotent
(MERGE on keys), so running one twice is harmless. A worker killed outright (SIGKILL of the main
process) leaves its unacknowledged message in Redis, which is redelivered after the broker's
visibility timeout (``MEDGRAPH_CELERY_VISIBILITY_TIMEOUT_S``).

Task modules (``workers/tasks/``) are thin: each task calls the services that do the work. The
broker, serialisation and routing settings come from ``services.jobs.wire_settings``, which the
API and CLI use to enqueue tasks by name, so both sides always agree.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_init, worker_process_init

from services.config import get_settings
from services.jobs import EMBED_QUEUE, GRAPH_QUEUE, QUEUES, wire_settings

__all__ = ["EMBED_QUEUE", "GRAPH_QUEUE", "QUEUES", "TASK_MODULES", "app", "create_app"]

TASK_MODULES = (
    "workers.tasks.ingest",
    "workers.tasks.communities",
)


def create_app() -> Celery:
    application = Celery("medgraph", include=list(TASK_MODULES))
    application.conf.update(
        wire_settings(get_settings()),
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return application


app = create_app()

# Threads per pool process, set before the fork so that N processes share the cores instead of
# each starting one BLAS/OpenMP thread per core.
_pool_processes = 1


# Inside a worker, a message a task sends (the next step of its batch, or its own retry) waits
# about a minute for the broker instead of failing after Celery's default 0.6 s: a Redis restart
# then costs a pause, not a batch (a retry that cannot be sent makes Celery drop the message).
# Clients (the CLI, the API) keep the short default, so they report a Redis outage at once.
WORKER_PUBLISH_RETRY_POLICY = {
    "max_retries": 15,
    "interval_start": 0.5,
    "interval_step": 1.0,
    "interval_max": 5.0,
}


@worker_init.connect
def _ride_out_broker_restarts(**_: object) -> None:
    app.conf.task_publish_retry_policy = WORKER_PUBLISH_RETRY_POLICY


@worker_init.connect
def _remember_pool_size(sender: object = None, **_: object) -> None:
    global _pool_processes
    _pool_processes = max(1, int(getattr(sender, "concurrency", 1) or 1))


@worker_process_init.connect
def _limit_threads(**_: object) -> None:
    """Read by torch (and BLAS) when a task first imports it; importing torch here would cost
    every pool process seconds at start, graph-only ones included."""
    threads = str(max(1, (os.cpu_count() or 1) // _pool_processes))
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(variable, threads)
