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
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from enum import StrEnum
from functools import cache
from typing import Any, NamedTuple

import redis

from services.config import Settings

log = logging.getLogger(__name__)

# Log entries kept: a read model further behind than this rebuilds instead of applying them.
# A few hours of a busy archive (an ingest batch, a delete or a relabel is one entry).
CHANGE_LOG_KEEP = 100_000
# Redis keys, per graph epoch: the highest sequence number of a published deletion, and
# key -> its sequence.
TOMBSTONE_SEQ = "medgraph:search:{epoch}:tombstone-seq"
TOMBSTONES = "medgraph:search:{epoch}:tombstones"

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
    """Tells every API process that these keys were deleted by the change ``seq``; False (and a
    warning) when Redis cannot be reached: the processes then see the deletion when they apply
    the log (within their follow interval)."""
    members = sorted(set(keys))
    if not members:
        return True
    client = redis_client(settings)
    try:
        client.eval(_PUBLISH, 2, TOMBSTONE_SEQ.format(epoch=change.epoch),
                    TOMBSTONES.format(epoch=change.epoch), change.seq, CHANGE_LOG_KEEP,
                    *members)  # fmt: skip
    except redis.RedisError as problem:
        log.warning("could not publish deleted keys to Redis (%s); searches in other API "
                    "processes drop them when they apply the change log", problem)  # fmt: skip
        return False
    return True


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
    if latest <= after:
        return latest, []
    entries = client.zrangebyscore(TOMBSTONES.format(epoch=epoch), f"({after}", latest,
                                   withscores=True)  # fmt: skip
    return latest, [(str(key), int(score)) for key, score in entries]
