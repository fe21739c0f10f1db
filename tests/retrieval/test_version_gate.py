"""The shared graph-version read: never staler than a request's own read, shared when it can."""

from __future__ import annotations

import threading
import time

from services.retrieval.readmodel import VersionGate


def test_a_request_never_uses_a_read_that_started_before_it_arrived() -> None:
    writes = [0]  # the "stored graph": a counter bumped by writers
    started = threading.Event()
    release = threading.Event()

    def read() -> tuple[int, str | None, str | None]:
        seen = writes[0]
        started.set()
        release.wait(5)
        return seen, None, None

    gate = VersionGate(read)
    first: list[tuple[int, str | None, str | None]] = []
    slow = threading.Thread(target=lambda: first.append(gate.version()))
    slow.start()
    assert started.wait(5)
    writes[0] = 1  # committed while the first read is in flight, before the second request
    second: list[tuple[int, str | None, str | None]] = []
    late = threading.Thread(target=lambda: second.append(gate.version()))
    late.start()
    time.sleep(0.05)
    release.set()
    slow.join(5)
    late.join(5)
    assert first == [(0, None, None)]
    assert second == [(1, None, None)], "the late request must not reuse the earlier read"
    assert gate.reads == 2


def test_concurrent_requests_share_reads() -> None:
    calls = [0]

    def read() -> tuple[int, str | None, str | None]:
        calls[0] += 1
        time.sleep(0.02)
        return 7, None, None

    gate = VersionGate(read)
    results: list[tuple[int, str | None, str | None]] = []
    threads = [threading.Thread(target=lambda: results.append(gate.version())) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert results == [(7, None, None)] * 16
    assert calls[0] < 16


def test_a_failed_read_lets_the_next_request_read_again() -> None:
    outcomes = iter([RuntimeError("neo4j down"), (3, None, None)])

    def read() -> tuple[int, str | None, str | None]:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    gate = VersionGate(read)
    try:
        gate.version()
    except RuntimeError:
        pass
    else:
        raise AssertionError("the failure must reach the caller")
    assert gate.version() == (3, None, None)
