"""``medgraph follow orthanc``: every new instance stored in Orthanc becomes an ``:Image``.

Why pull rather than push: Orthanc's ``/changes`` feed is a durable, numbered log of what it
stored, so the follower only has to remember one number. Pushing (Orthanc's DICOMweb plugin
sending to our STOW-RS) loses instances sent while medgraph is down unless each failed job is
retried by hand, and needs a script inside Orthanc to send each new instance at all.

Restarts of either side lose and duplicate nothing:

- the position (the last ``Seq`` handled) is kept in Redis, and it moves only after the page's
  instances were kept and their ingest job was queued (Redis holds both, with the same
  durability), so a follower killed mid-page reads the page again;
- a page read again gives the same ingest job id (``orthanc-<from>-<to>``), and resuming a job
  sends only its batches not yet counted; an instance kept twice is the same file (its key is
  the SHA-256 of its pseudonymised copy), and its node is MERGEd by that key;
- while Orthanc, Redis or Neo4j is down, the follower waits and tries the same page again.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import redis

from services.config import Settings
from services.ingest.dicom_intake import RefusedInstance, ingest_received, receive_instance
from services.runtime.orthanc import authorization
from services.secrets import patient_key_secret

log = logging.getLogger(__name__)
PAGE = 100  # changes read per request
POSITION_KEY = "medgraph:orthanc-feed:{url}:position"
REQUEST_TIMEOUT_S = 30.0
NEW_INSTANCE = ("NewInstance", "Instance")


class FeedUnavailable(RuntimeError):
    """Orthanc cannot be reached or answered with an error; the page is tried again."""


@dataclass(frozen=True)
class StepResult:
    changes: int  # changes read from the feed
    stored: int  # instances kept and queued
    refused: list[str]  # reasons (no PHI: instances are named by their feed sequence number)
    job_id: str | None
    position: int  # the stored position after this step


class OrthancFeed:
    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.url = settings.orthanc_base_url
        self.redis = client or redis.Redis.from_url(settings.broker_url, decode_responses=True)
        self.secret = patient_key_secret(settings)
        self.key = POSITION_KEY.format(url=self.url)

    def position(self) -> int:
        return int(self.redis.get(self.key) or 0)

    def _get(self, path: str) -> bytes | None:
        request = urllib.request.Request(
            f"{self.url}{path}", headers={"Authorization": authorization(self.settings)}
        )
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise FeedUnavailable(f"Orthanc answered {error.code} to GET {path}") from None
        except (urllib.error.URLError, OSError) as error:
            raise FeedUnavailable(f"Orthanc at {self.url} cannot be reached ({error})") from None

    def step(self) -> StepResult:
        """Handles one page of the feed after the stored position."""
        since = self.position()
        raw = self._get(f"/changes?since={since}&limit={PAGE}")
        if raw is None:
            raise FeedUnavailable(f"Orthanc at {self.url} has no /changes feed")
        page: dict[str, Any] = json.loads(raw)
        changes = page.get("Changes", [])
        last = int(page.get("Last", since))
        if not changes:
            # An empty page still reports the newest Seq; keep it, so old changes are not
            # scanned again (Last never goes backwards while Orthanc keeps its database).
            if last > since:
                self.redis.set(self.key, last)
            return StepResult(0, 0, [], None, max(since, last))
        last = max(int(change["Seq"]) for change in changes)
        kept, refused = [], []
        for change in changes:
            if (change.get("ChangeType"), change.get("ResourceType")) != NEW_INSTANCE:
                continue
            name = f"Orthanc change {change['Seq']}"
            data = self._get(f"/instances/{change['ID']}/file")
            if data is None:
                continue  # deleted from Orthanc since: nothing to ingest
            try:
                kept.append(receive_instance(data, name, self.settings, self.secret))
            except RefusedInstance as problem:
                refused.append(problem.reason)
                log.warning("refused %s", problem.reason)
        job_id = None
        if kept:
            paths = list(dict.fromkeys(item.path for item in kept))
            job_id = ingest_received(paths, self.settings, f"orthanc-{since}-{last}")
        self.redis.set(self.key, last)
        return StepResult(len(changes), len(kept), refused, job_id, last)

    def run(self, stop: threading.Event | None = None, poll_s: float | None = None) -> None:
        """Follows the feed until ``stop`` is set (or forever)."""
        stop = stop or threading.Event()
        poll_s = poll_s or self.settings.orthanc_poll_s
        while not stop.is_set():
            try:
                result = self.step()
            except (FeedUnavailable, redis.RedisError, OSError) as problem:
                log.warning("waiting: %s", problem)
                stop.wait(poll_s)
                continue
            except Exception:  # Neo4j down while queuing the job, and the like: try again
                log.exception("the page after %s failed; trying it again", self.position())
                stop.wait(poll_s)
                continue
            if result.changes:
                log.info(
                    "position %d: %d change(s), %d instance(s) queued (job %s), %d refused",
                    result.position, result.changes, result.stored, result.job_id,
                    len(result.refused),
                )  # fmt: skip
            if result.changes < PAGE:
                stop.wait(poll_s)
