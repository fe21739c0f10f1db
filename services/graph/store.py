"""Neo4j access: one driver per process, named Cypher, batched writes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from neo4j import READ_ACCESS, Driver, GraphDatabase, Record
from neo4j.exceptions import ServiceUnavailable, SessionExpired, TransientError

from services.config import Settings, get_settings
from services.graph.cypher import load_cypher, load_cypher_statements
from services.secrets import neo4j_auth

TRANSIENT_NEO4J_ERRORS = (ServiceUnavailable, SessionExpired, TransientError, ConnectionError)

_driver_lock = threading.Lock()
_drivers: dict[tuple[str, tuple[str, str] | None], Driver] = {}


def open_driver(settings: Settings) -> Driver:
    return GraphDatabase.driver(
        settings.bolt_uri,
        auth=neo4j_auth(settings),
        max_transaction_retry_time=settings.neo4j_retry_time_s,
        # Cypher that reads optional properties makes Neo4j send "property does not exist"
        # notices on a young database; they are expected here and only flood the logs.
        notifications_min_severity="OFF",
    )


def shared_driver(settings: Settings | None = None) -> Driver:
    """The process-wide driver for these settings (drivers are thread-safe and pool sessions)."""
    settings = settings or get_settings()
    # The password is part of the identity: a server started anew on the same address with a
    # new generated password (a test's private stack, a reset home) must not get the old driver.
    key = (settings.bolt_uri, neo4j_auth(settings))
    with _driver_lock:
        driver = _drivers.get(key)
        if driver is None:
            driver = _drivers[key] = open_driver(settings)
        return driver


def close_shared_drivers() -> None:
    with _driver_lock:
        for driver in _drivers.values():
            driver.close()
        _drivers.clear()


class GraphStore:
    """Runs the named statements of ``cypher/`` against one database."""

    def __init__(self, driver: Driver, database: str) -> None:
        self.driver = driver
        self.database = database

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> GraphStore:
        settings = settings or get_settings()
        return cls(shared_driver(settings), settings.neo4j_database)

    def query(self, name: str, /, **params: Any) -> list[Record]:
        # ``name`` is positional-only, so a statement may take a ``$name`` parameter too.
        return self.run_text(load_cypher(name), **params)

    def run_text(self, text: str, **params: Any) -> list[Record]:
        records, _, _ = self.driver.execute_query(text, params, database_=self.database)
        return records

    def read_autocommit(self, name: str, /, **params: Any) -> list[Record]:
        """A named read in one round trip, for reads on every request (the search side's graph
        version): an auto-commit query sends RUN and PULL together, where ``query``'s managed
        transaction adds a COMMIT round trip and routes as a write. A transient failure falls
        back to ``query``, which retries."""
        text = load_cypher(name)
        try:
            with self.driver.session(
                database=self.database, default_access_mode=READ_ACCESS
            ) as session:
                return list(session.run(text, params))
        except TRANSIENT_NEO4J_ERRORS:
            return self.run_text(text, **params)

    def run_autocommit(self, text: str, **params: Any) -> list[dict[str, Any]]:
        """For ``CALL { } IN TRANSACTIONS``, which a managed transaction cannot run."""
        with self.driver.session(database=self.database) as session:
            return [record.data() for record in session.run(text, params)]

    def write_batches(
        self, name: str, rows: Iterable[dict[str, Any]], batch_size: int, **params: Any
    ) -> int:
        """``UNWIND $rows`` writes in batches; returns the number of rows sent."""
        text = load_cypher(name)
        sent = 0
        for batch in _chunks(rows, batch_size):
            self.driver.execute_query(text, {"rows": batch, **params}, database_=self.database)
            sent += len(batch)
        return sent

    def apply_schema(self) -> None:
        for statement in load_cypher_statements("schema"):
            self.run_text(statement)
        self.run_text("CALL db.awaitIndexes(300)")

    def wait_until_available(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.driver.verify_connectivity()
                return
            except TRANSIENT_NEO4J_ERRORS:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)


class _Rows(list):  # type: ignore[type-arg]
    """A batch of rows with a short repr. The driver (neo4j 6.4, ``Bolt5x5.run``) formats every
    RUN's parameters for a debug log line even when debug logging is off; for 1000 rows of
    1024-float embeddings that repr cost ~9x the time of sending them."""

    def __repr__(self) -> str:
        return f"<{len(self)} rows>"


def _chunks(rows: Iterable[dict[str, Any]], size: int) -> Iterator[Sequence[dict[str, Any]]]:
    batch: list[dict[str, Any]] = _Rows()
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = _Rows()
    if batch:
        yield batch
