"""Ingest job progress in Redis, counted exactly once per batch however often a task runs.

Keys (all expire ``ingest_job_ttl_s`` after the last update):

- ``medgraph:ingest:<job>``: hash with ``total``, ``done``, ``failed``, ``status``, timings,
  the edge-building outcome and what was ingested.
- ``medgraph:ingest:<job>:batches``: hash batch id -> ``"done,failed"``. A batch is counted when
  this field is first set (``HSETNX`` inside one Lua script with the counters), so a task that
  is redelivered after a crash, or retried, never counts its files twice.
- ``medgraph:ingest:<job>:failures``: hash file -> reason.
- ``medgraph:ingest:<job>:deliveries``: hash task delivery key -> starts (crash detection).

Status: ``queued`` -> ``running`` (first batch written) -> ``linking`` (all files accounted
for, SIMILAR edges being built) -> ``done``, or ``failed`` when edge building gave up.
A summary also goes to the job's ``:IngestJob`` node in Neo4j (``workers.tasks.ingest``).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import redis

from services.config import Settings

KEY_PREFIX = "medgraph:ingest:"
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
FINISHED_STATUSES = ("done", "failed")

_RECORD_BATCH = """
local new = redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2] .. ',' .. ARGV[3])
if new == 1 then
  redis.call('HINCRBY', KEYS[1], 'done', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'failed', ARGV[3])
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[5])
  if redis.call('HGET', KEYS[1], 'status') == 'queued' then
    redis.call('HSET', KEYS[1], 'status', 'running')
  end
  for i = 6, #ARGV, 2 do
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  end
end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '-1')
local done = tonumber(redis.call('HGET', KEYS[1], 'done') or '0')
local failed = tonumber(redis.call('HGET', KEYS[1], 'failed') or '0')
return {new, done, failed, total}
"""


class UnknownJob(KeyError):
    pass


def check_job_id(job_id: str) -> str:
    if not _JOB_ID.match(job_id):
        raise ValueError(f"invalid job id {job_id!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return job_id


@dataclass(frozen=True)
class BatchRecord:
    newly_recorded: bool
    done: int
    failed: int
    total: int

    @property
    def complete(self) -> bool:
        return self.total >= 0 and self.done + self.failed >= self.total


@dataclass(frozen=True)
class JobProgress:
    job_id: str
    status: str
    total: int
    done: int
    failed: int
    fields: dict[str, str]

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.done - self.failed)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    def get(self, name: str, default: str = "") -> str:
        return self.fields.get(name, default)


class JobTracker:
    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self._record_batch = client.register_script(_RECORD_BATCH)

    @classmethod
    def from_settings(cls, settings: Settings) -> JobTracker:
        client = redis.Redis.from_url(settings.broker_url, decode_responses=True)
        return cls(client, settings.ingest_job_ttl_s)

    @staticmethod
    def key(job_id: str, part: str = "") -> str:
        return f"{KEY_PREFIX}{job_id}" + (f":{part}" if part else "")

    def _keys(self, job_id: str) -> list[str]:
        return [self.key(job_id), self.key(job_id, "batches"), self.key(job_id, "failures")]

    def create(self, job_id: str, total: int, **fields: Any) -> bool:
        """A new job record; False (and nothing changed) when the job id already exists."""
        key = self.key(job_id)
        now = f"{time.time():.3f}"
        values = {str(k): str(v) for k, v in fields.items() if v is not None}
        created = self.client.hsetnx(key, "total", total)
        if not created:
            return False
        self.client.hset(
            key,
            mapping={"status": "queued", "done": 0, "failed": 0, "created_at": now,
                     "updated_at": now, **values},
        )  # fmt: skip
        self.client.expire(key, self.ttl_s)
        return True

    def exists(self, job_id: str) -> bool:
        return bool(self.client.exists(self.key(job_id)))

    def record_batch(
        self, job_id: str, batch_id: str, done: int, failures: list[tuple[str, str]]
    ) -> BatchRecord:
        flat: list[str] = []
        for file, reason in failures:
            flat.extend((file, reason))
        result = self._record_batch(
            keys=self._keys(job_id),
            args=[batch_id, done, len(failures), self.ttl_s, f"{time.time():.3f}", *flat],
        )
        new, done_total, failed_total, total = (int(value) for value in result)
        return BatchRecord(bool(new), done_total, failed_total, total)

    def recorded_batches(self, job_id: str) -> set[str]:
        return set(self.client.hkeys(self.key(job_id, "batches")))

    def count_delivery(self, job_id: str, delivery_key: str) -> int:
        """How many times this task delivery has started (more than once = a worker died)."""
        key = self.key(job_id, "deliveries")
        starts = int(self.client.hincrby(key, delivery_key, 1))
        self.client.expire(key, self.ttl_s)
        return starts

    def update(self, job_id: str, **fields: Any) -> None:
        key = self.key(job_id)
        values = {str(k): str(v) for k, v in fields.items() if v is not None}
        values["updated_at"] = f"{time.time():.3f}"
        self.client.hset(key, mapping=values)
        self.client.expire(key, self.ttl_s)

    def claim(self, job_id: str, flag: str) -> bool:
        """Sets ``flag`` once; True for the caller that set it."""
        return bool(self.client.hsetnx(self.key(job_id), flag, f"{time.time():.3f}"))

    def progress(self, job_id: str) -> JobProgress:
        fields = self.client.hgetall(self.key(job_id))
        if not fields:
            raise UnknownJob(job_id)
        return JobProgress(
            job_id=job_id,
            status=fields.get("status", "queued"),
            total=int(fields.get("total", 0)),
            done=int(fields.get("done", 0)),
            failed=int(fields.get("failed", 0)),
            fields=fields,
        )

    def failures(self, job_id: str) -> list[tuple[str, str]]:
        return sorted(self.client.hgetall(self.key(job_id, "failures")).items())
