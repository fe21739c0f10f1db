"""waitress, set up so that slow or idle clients cannot exhaust the server (issue 26).

waitress buffers each request completely before a worker thread sees it, so slow clients hold
no thread, only a connection. What a slow or idle client could exhaust is the connection budget
(waitress stops accepting at ``connection_limit``, 100 by default: 100 slow-header sockets made
the API unreachable). Hence:

- a connection budget with headroom (``api_connection_limit``, 1000), the open-file limit raised
  to fit, and ``poll()`` instead of ``select()`` (which fails above file descriptor 1023);
- deadlines per request, which waitress lacks: its ``channel_timeout`` only closes connections
  that send nothing, so a client that sends one header line every 2 s stays forever. Here a
  request whose headers are not complete ``api_header_timeout_s`` after its first byte, or whose
  body is not complete ``api_request_timeout_s`` after it, has its connection closed;
- keep-alive connections with no request in progress are closed after ``api_idle_timeout_s``
  without a byte (waitress's ``channel_timeout``).

Deadlines are checked every ``CHECK_INTERVAL_S`` by waitress's own maintenance pass, in the
event-loop thread that also reads the sockets (no locking needed).
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable
from typing import Any

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

from services.config import Settings

log = logging.getLogger(__name__)
CHECK_INTERVAL_S = 1
# File descriptors the process needs besides client connections: the Neo4j driver's pool,
# Redis, log files, the listening socket, the model's files.
RESERVED_FDS = 256


class DeadlineChannel(HTTPChannel):
    """An HTTP connection that remembers when the request it is receiving began."""

    request_started: float | None = None

    def received(self, data: bytes) -> bool:
        before = self.request
        result = bool(super().received(data))
        if self.request is None:
            self.request_started = None  # nothing partial: the request (if any) is complete
        elif self.request is not before:
            self.request_started = time.monotonic()
        return result


class GuardedServer(TcpWSGIServer):
    channel_class = DeadlineChannel
    header_timeout_s = 10.0
    request_timeout_s = 120.0

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # idle keep-alive connections (channel_timeout)
        clock = time.monotonic()
        closed = 0
        for channel in list(self.active_channels.values()):
            started = getattr(channel, "request_started", None)
            request = channel.request
            if started is None or request is None or channel.will_close:
                continue
            limit = self.request_timeout_s if request.headers_finished else self.header_timeout_s
            if clock - started > limit:
                channel.will_close = True
                closed += 1
        if closed:
            log.info("closed %d connection(s) whose request did not arrive in time", closed)


def raise_open_file_limit(connections: int) -> int:
    """Raises the soft open-file limit to fit ``connections`` plus the process's own files;
    returns how many connections fit (fewer when the hard limit is lower)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + RESERVED_FDS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        soft = ceiling
    if soft != resource.RLIM_INFINITY and soft < wanted:
        fitting = max(soft - RESERVED_FDS, 10)
        log.warning(
            "the open-file limit (%d) fits only %d connections, not api_connection_limit=%d",
            soft, fitting, connections,
        )  # fmt: skip
        return fitting
    return connections


def server_adjustments(settings: Settings, host: str, port: int, threads: int) -> dict[str, Any]:
    """waitress's settings for ``medgraph serve``."""
    return {
        "host": host,
        "port": port,
        "threads": threads,
        # waitress counts its own listening socket and wake-up pipe among the connections.
        "connection_limit": raise_open_file_limit(settings.api_connection_limit) + 2,
        "channel_timeout": settings.api_idle_timeout_s,
        "cleanup_interval": CHECK_INTERVAL_S,
        "asyncore_use_poll": True,
        # Uploads are bounded by MAX_CONTENT_LENGTH in Flask; waitress's own cap is set above it
        # so that Flask, not waitress, answers oversized uploads (with a JSON 413).
        "max_request_body_size": settings.api_max_upload_bytes * 2,
        "ident": "medgraph",
    }


def serve_guarded(
    app: Callable[..., Any], settings: Settings, host: str, port: int, threads: int
) -> None:
    """Blocks serving ``app`` until interrupted."""
    adjustments = Adjustments(**server_adjustments(settings, host, port, threads))
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adjustments.threads)
    socket_map: dict[int, Any] = {}
    servers = []
    for sockinfo in adjustments.listen:
        server = GuardedServer(
            app, socket_map, dispatcher=dispatcher, adj=adjustments, sockinfo=sockinfo
        )
        server.header_timeout_s = settings.api_header_timeout_s
        server.request_timeout_s = settings.api_request_timeout_s
        server.print_listen("Serving on http://{}:{}")
        servers.append(server)
    try:
        servers[0].asyncore.loop(
            timeout=adjustments.asyncore_loop_timeout, map=socket_map, use_poll=True
        )
    except (SystemExit, KeyboardInterrupt):
        dispatcher.shutdown()
