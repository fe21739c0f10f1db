"""The log of changes to what a search may see, written by every write path in the
transaction that makes the change (``graph_change_record.cypher``), and the deleted keys the
search side checks on every search (a Redis sorted set).

Why the log lives in Neo4j: a change and its record commit together or not at all, so no
committed change is ever missing from the log and no logged change is uncommitted, whatever
process dies when; the generation's write lock gives every change its place in one order.
(A Redis stream written after the commit could lose a change to a crash in between, and Redis
may run without persistence.) Why deleted keys also go to Redis: a deletion must be invisible
to every API process as soon as its ``DELETE`` answers, and a Redis counter read per search
costs a fraction of a Neo4j round trip (``services/retrieval/README.md``).

Read leases take even that read off the search path. An API process that holds one (a Redis key
that expires unless renewed, whose value is the latest deletion the process has applied) is
waited for by every deletion before it answers, so the process can trust its own snapshot. A
process that stops renewing is waited for only until its key expires, and it stops trusting its
snapshot before that (it counts its lease from before it sent the renewal).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from enum import StrEnum
from functools import cache
from typing import Any, NamedTuple

import redis

from services.config import MAX_READ_LEASE_S, Settings

log = logging.getLogger(__name__)

# Log entries kept: a read model further behind than this rebuilds instead of applying them.
# A few hours of a busy archive (an ingest batch, a delete or a relabel is one entry).
CHANGE_LOG_KEEP = 100_000
# Redis keys, per graph epoch: the highest sequence number of a published deletion, and
# key -> its sequence.
TOMBSTONE_SEQ = "medgraph:search:{epoch}:tombstone-seq"
TOMBSTONES = "medgraph:search:{epoch}:tombstones"

# Per graph epoch: the API processes holding a read lease, and per process (the prefix plus its
# id) the latest deletion it has applied, expiring with its lease.
READERS = "medgraph:search:{epoch}:readers"
READER = "medgraph:search:{epoch}:reader:"
# The longest a deletion waits for processes that renew their lease without acknowledging it
# (none should: a process renews only after it applied what it read; past this, an error).
READ_LEASE_WAIT_LIMIT_S = 2 * MAX_READ_LEASE_S + 1.0
READ_LEASE_POLL_S = 0.002

# KEYS: the reader's key, the readers set, the latest deletion; ARGV: applied, lease (ms), id.
_RENEW = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return redis.call('GET', KEYS[3]) or '0'
"""
# KEYS: the readers set; ARGV: the readers' key prefix, the deletion's sequence. Returns the
# readers whose lease holds and who have not applied it; drops those whose lease ended. (The
# readers' keys are not in KEYS: one Redis, not a cluster, as for the broker.)
_BEHIND = """
local behind = {}
for _, reader in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local applied = redis.call('GET', ARGV[1] .. reader)
  if not applied then redis.call('SREM', KEYS[1], reader)
  elseif tonumber(applied) < tonumber(ARGV[2]) then behind[#behind + 1] = reader end
end
return behind
"""

# ARGV: sequence, keep, keys...; deleted keys older than the log's horizon are trimmed.
_PUBLISH = """
for i = 3, #ARGV do redis.call('ZADD', KEYS[2], ARGV[1], ARGV[i]) end
local seen = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > seen then redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
return 1
"""


class ChangeKind(StrEnum):
    ROWS = "rows"  # re-read these images (added, deleted, relabelled, edges or community)
    PARTITION = "partition"  # a clustering run finished: a new partition
    RELOAD = "reload"  # too large to apply row by row (a bulk edge build)


Runner = Callable[..., Any]


class Change(NamedTuple):
    seq: int  # the generation the change set
    epoch: str  # the graph's random id (a wiped or restored database gets a new one)


def record_change(run: Runner, kind: ChangeKind, keys: Iterable[str] = ()) -> Change:
    """Logs a change with ``run`` (a transaction's named-statement runner, or
    ``GraphStore.query`` for a change that is its own transaction)."""
    rows = run("graph_change_record", kind=str(kind), keys=sorted(set(keys)),
               keep=CHANGE_LOG_KEEP)  # fmt: skip
    return Change(int(rows[0]["seq"]), str(rows[0]["epoch"]))


@cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=2.0)


def redis_client(settings: Settings) -> redis.Redis:
    return _client(settings.broker_url)


def publish_tombstones(settings: Settings, keys: Iterable[str], change: Change) -> bool:
    """Tells every API process that these keys were deleted by the change ``seq``, and returns
    once every process holding a read lease has applied that (``wait_for_readers``).

    False (and a warning) when Redis cannot be reached: the processes then see the deletion
    when they apply the log (within their follow interval), and this waits out one lease first,
    so that no process still trusts its snapshot without having seen it."""
    members = sorted(set(keys))
    if not members:
        return True
    client = redis_client(settings)
    try:
        client.eval(_PUBLISH, 2, TOMBSTONE_SEQ.format(epoch=change.epoch),
                    TOMBSTONES.format(epoch=change.epoch), change.seq, CHANGE_LOG_KEEP,
                    *members)  # fmt: skip
        behind = wait_for_readers(client, change, settings.search_read_lease_s)
    except redis.RedisError as problem:
        log.warning("could not publish deleted keys to Redis (%s); searches in other API "
                    "processes drop them when they apply the change log", problem)  # fmt: skip
        time.sleep(settings.search_read_lease_s)
        return False
    if behind:
        log.error("API processes %s kept their read lease without applying deletion %d for "
                  "%.0f s; they may still return its keys", ", ".join(behind), change.seq,
                  READ_LEASE_WAIT_LIMIT_S)  # fmt: skip
        return False
    return True


def wait_for_readers(client: redis.Redis, change: Change, lease_s: float) -> list[str]:
    """Waits until every API process holding a read lease on the graph ``change.epoch`` has
    applied the deletion ``change.seq`` or its lease has ended; returns the processes still
    behind at ``READ_LEASE_WAIT_LIMIT_S`` (none: every one has).

    A Redis that started less than a lease ago may have lost leases granted before (a restart,
    with or without a restored snapshot): the wait lasts until those are over."""
    uptime_s = int(client.info("server")["uptime_in_seconds"])  # whole seconds, rounded down
    if uptime_s < lease_s:
        time.sleep(lease_s - uptime_s)
    deadline = time.monotonic() + READ_LEASE_WAIT_LIMIT_S
    while True:
        behind = client.eval(_BEHIND, 1, READERS.format(epoch=change.epoch),
                             READER.format(epoch=change.epoch), change.seq)  # fmt: skip
        if not behind or time.monotonic() > deadline:
            return [str(reader) for reader in behind]
        time.sleep(READ_LEASE_POLL_S)


def renew_read_lease(
    client: redis.Redis, epoch: str, reader: str, applied: int, lease_s: float
) -> int:
    """Takes or renews ``reader``'s read lease on the graph ``epoch`` for ``lease_s``, with
    ``applied``, the latest deletion the reader has applied; returns the latest published."""
    return int(client.eval(_RENEW, 3, READER.format(epoch=epoch) + reader,
                           READERS.format(epoch=epoch), TOMBSTONE_SEQ.format(epoch=epoch),
                           applied, max(1, round(lease_s * 1000)), reader))  # fmt: skip


def end_read_lease(client: redis.Redis, epoch: str, reader: str) -> None:
    """Gives the lease up at once, so that no deletion waits for a process that stopped."""
    client.delete(READER.format(epoch=epoch) + reader)
    client.srem(READERS.format(epoch=epoch), reader)


def send_latest_deletion(client: redis.Redis, epoch: str) -> redis.Connection:
    """Sends the read of the latest sequence published for the graph ``epoch`` and returns at
    once, so that a search runs while Redis answers; ``read_latest_deletion`` takes the answer
    and hands the connection back. A caller that will not read it calls ``drop_read``."""
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        connection.send_command("GET", TOMBSTONE_SEQ.format(epoch=epoch))
    except BaseException:
        drop_read(client, connection)
        raise
    return connection


def read_latest_deletion(client: redis.Redis, connection: redis.Connection) -> int:
    try:
        return int(connection.read_response() or 0)
    except BaseException:
        connection.disconnect()
        raise
    finally:
        client.connection_pool.release(connection)


def drop_read(client: redis.Redis, connection: redis.Connection) -> None:
    # An unread answer would be taken for the next command's on this connection.
    connection.disconnect()
    client.connection_pool.release(connection)


def tombstones_after(
    client: redis.Redis, epoch: str, after: int
) -> tuple[int, list[tuple[str, int]]]:
    """(the latest published sequence, [(key, sequence)] published after ``after``) of the
    graph ``epoch``."""
    latest = int(client.get(TOMBSTONE_SEQ.format(epoch=epoch)) or 0)
    return latest, tombstones_between(client, epoch, after, latest)


def tombstones_between(
    client: redis.Redis, epoch: str, after: int, latest: int
) -> list[tuple[str, int]]:
    """[(key, sequence)] published after ``after`` up to ``latest`` for the graph ``epoch``."""
    if latest <= after:
        return []
    entries = client.zrangebyscore(TOMBSTONES.format(epoch=epoch), f"({after}", latest,
                                   withscores=True)  # fmt: skip
    return [(str(key), int(score)) for key, score in entries]
