"""The one seam between services and the Celery workers: names, the wire settings, a client.

services never import ``workers``: they enqueue tasks by their registered name through
``client(settings)`` (a producer-only Celery app with the workers' broker and serialisation
settings), ask workers for pings and queues, read a job's stored result, and start a worker
process with ``worker_argv`` (``celery -A workers.celery_app worker`` as a command line).
``workers/celery_app.py`` builds its app from ``wire_settings`` too, so both sides agree.

Task names are part of the message format: messages already queued in Redis carry them, so
they never change when a module moves.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from services.config import Settings

EMBED_QUEUE = "embed"
GRAPH_QUEUE = "graph"
QUEUES = (EMBED_QUEUE, GRAPH_QUEUE)

# Registered task names (``name=`` on each task in workers/tasks/); kept from the modules that
# first defined them.
EMBED_BATCH = "workers.ingest.tasks.embed_batch"
WRITE_IMAGES = "workers.ingest.tasks.write_images"
LINK_IMAGES = "workers.ingest.tasks.link_images"
CLUSTER = "medgraph.communities.cluster"

# The Celery application module, as ``celery -A`` takes it.
CELERY_APP = "workers.celery_app"
RESULT_EXPIRES_S = 24 * 3600


def wire_settings(settings: Settings) -> dict[str, Any]:
    """Celery settings both the workers and the clients must share: broker, result store,
    serialisation and routing."""
    transport_options = {
        "visibility_timeout": settings.celery_visibility_timeout_s,
        # Look for expired unacknowledged messages every 10 s (kombu's default scans every 10th
        # 10 s tick), so a dead worker's or a lost connection's tasks come back one visibility
        # timeout after delivery rather than up to 100 s later.
        "unacked_restore_throttle": 1,
    }
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.broker_url,
        "broker_transport_options": transport_options,
        "result_backend_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": GRAPH_QUEUE,
        "task_routes": {EMBED_BATCH: {"queue": EMBED_QUEUE}},
        "task_ignore_result": True,
        "result_expires": RESULT_EXPIRES_S,
    }


_clients: dict[tuple[Any, ...], Celery] = {}
_clients_lock = threading.Lock()


def client(settings: Settings) -> Celery:
    """A producer-only Celery app for ``settings``' broker (one per distinct wire settings,
    kept: it holds the connection pool)."""
    wire = wire_settings(settings)
    identity = (wire["broker_url"], settings.celery_visibility_timeout_s)
    with _clients_lock:
        application = _clients.get(identity)
        if application is None:
            # Not the current app: in a worker process, tasks keep sending through its own.
            application = Celery("medgraph-client", set_as_current=False)
            application.conf.update(wire)
            _clients[identity] = application
    return application


def send(
    settings: Settings,
    name: str,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    **options: Any,
) -> AsyncResult:
    """Enqueue the task registered as ``name`` (queue from the routes unless ``queue=``).

    Results are not kept unless ``ignore_result=False`` is given, as with ``apply_async`` on
    the tasks themselves (``send_task`` alone would also subscribe this client to every
    task's result channel).
    """
    options.setdefault("ignore_result", True)
    return client(settings).send_task(name, args=args, kwargs=kwargs, **options)


def task_meta(settings: Settings, task_id: str) -> dict[str, Any]:
    """A task's stored ``status`` and ``result`` (an exception for FAILURE), read together.

    One GET of the task's result key, which the worker writes whole: a snapshot. Reading
    ``AsyncResult.state`` and then ``.result`` asks Redis again each time while the task is
    unfinished, so the two can come from either side of the task finishing."""
    return client(settings).backend.get_task_meta(task_id)


# Celery answers PENDING for a task id it has never seen, so the ids of the jobs the API starts
# are remembered (as long as their results) to tell a made-up id (404) from a queued job.
SENT_JOB_PREFIX = "medgraph:sent-job:"


def remember_job(settings: Settings, task_id: str) -> None:
    backend = client(settings).backend
    backend.client.set(SENT_JOB_PREFIX + task_id, "1", ex=RESULT_EXPIRES_S)


def job_was_sent(settings: Settings, task_id: str) -> bool:
    return bool(client(settings).backend.client.exists(SENT_JOB_PREFIX + task_id))


def ping(
    settings: Settings, destination: list[str] | None = None, timeout_s: float = 1.0
) -> list[dict[str, Any]]:
    """Replies of the workers (all, or the named nodes) that answer within ``timeout_s``."""
    return client(settings).control.ping(destination=destination, timeout=timeout_s) or []


def listening_queues(settings: Settings, timeout_s: float = 1.0) -> set[str]:
    """Queues some running worker consumes (empty when none answers within ``timeout_s``)."""
    replies = client(settings).control.inspect(timeout=timeout_s).active_queues() or {}
    return {queue["name"] for queues in replies.values() for queue in queues}


def worker_argv(
    queues: tuple[str, ...] | list[str] = QUEUES,
    concurrency: int | None = None,
    hostname: str | None = None,
    loglevel: str = "INFO",
) -> list[str]:
    """``celery -A workers.celery_app worker`` with medgraph's choices, for any launcher."""
    argv = [sys.executable, "-m", "celery", "-A", CELERY_APP, "worker",
            "-Q", ",".join(queues), "--loglevel", loglevel,
            # Gossip/mingle only add start-up time and chatter for a handful of workers.
            "--without-gossip", "--without-mingle"]  # fmt: skip
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    if hostname:
        argv += ["--hostname", hostname]
    return argv
