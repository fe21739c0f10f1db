"""Which read-model snapshot a search uses, and how it follows the stored graph.

The stored graph's writes are logged in Neo4j (``services/graph/changes.py``); a snapshot knows
the sequence number of the latest change it reflects. Following = reading the cheap graph
version (``search_graph_version.cypher``), then the log entries after the snapshot's, then the
stored state of the images they name, and applying it (``incremental.apply_rows``): a new
snapshot, swapped in atomically. A new partition (a clustering run), a compaction, and anything
the log does not explain (Cypher run outside the platform: a generation, image count, SIMILAR
count, latest ingestion or latest run that no logged change accounts for) build a whole new
model instead, and the changes logged meanwhile are replayed on it before it is swapped in.

Two ways to follow, one per kind of process:

- ``live=False`` (the CLI, evaluations, tests of the strategies): every search reads the version
  (shared among concurrent searches, ``VersionGate``) and follows before it searches; builds run
  on the caller's thread. Never stale, one Neo4j round trip per search.
- ``live=True`` (the API processes): a background thread follows every
  ``search_follow_interval_s``; builds run on their own thread while searches go on with the
  current snapshot. The search path makes no Neo4j round trip. While the process holds a read
  lease (``changes.renew_read_lease``, renewed on a thread of its own every tenth of
  ``search_read_lease_s``) it makes no Redis round trip either: every deletion waits, before it
  answers, until the lease thread has dropped its keys from the snapshot. Without a lease (not
  yet taken, or lapsed) a search reads one Redis counter, the latest deletion published
  (``changes.publish_tombstones``), and drops newly deleted keys from its snapshot at once.
  Only a process's very first search waits, for the first load.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import psutil
import redis

from services.config import Settings
from services.graph.changes import (
    CHANGE_LOG_KEEP,
    ChangeKind,
    drop_read,
    end_read_lease,
    read_latest_deletion,
    redis_client,
    renew_read_lease,
    send_latest_deletion,
    tombstones_after,
    tombstones_between,
)
from services.graph.store import GraphStore
from services.retrieval.contract import SearchDiagnostics
from services.retrieval.incremental import (
    NeedsRebuild,
    apply_rows,
    regroup,
    relayout,
    with_tombstones,
)
from services.retrieval.readmodel import GraphSnapshot, GraphVersion, VersionGate, load_snapshot
from services.runtime.memory import release_free_heap

log = logging.getLogger(__name__)

# Log entries applied per round; a longer backlog is applied over several rounds.
CHANGES_PER_ROUND = 2_000
# Rows appended or tombstoned since the layout, as a share of it, past which the model is
# compacted (rebuilt in memory) in the background; appended rows cost a gather per search.
COMPACT_FRACTION = 0.05
MIN_COMPACT_ROWS = 2_000
REBUILD = "rebuild"  # a whole new model from Neo4j
PARTITION = "partition"  # a new layout for a new clustering run, built in memory
COMPACT = "compact"  # the same layout, tombstones dropped, appended rows in their blocks
_BUILD_ORDER = (REBUILD, PARTITION, COMPACT)
# How long after a swap the follower hands the freed heap back (services/runtime/memory.py): by
# then the searches still running on the old snapshot (milliseconds each) have let it go.
RELEASE_HEAP_AFTER_S = 1.0
# A read lease is renewed this many times per lease; a process trusts it for this share of it
# less (counted from before the renewal was sent, so it stops before Redis drops the key).
LEASE_RENEWALS = 10
LEASE_MARGIN = 0.1

Answer = TypeVar("Answer")


class ReadModelCache:
    """One current snapshot per process; thread-safe."""

    def __init__(
        self, store: GraphStore, settings: Settings | None = None, *, live: bool = False
    ) -> None:
        self.store = store
        self.live = live
        self.interval_s = (
            settings.search_follow_interval_s
            if settings is not None
            else Settings.model_fields["search_follow_interval_s"].default
        )
        self.layout_memory_bytes = (
            settings.search_layout_memory_mib * 2**20 if settings is not None else None
        )
        self._redis = redis_client(settings) if live and settings is not None else None
        self.lease_s = settings.search_read_lease_s if self._redis is not None else 0.0
        self._reader = uuid.uuid4().hex
        # (graph epoch, monotonic time until which searches may skip the Redis read)
        self._lease: tuple[str, float] | None = None
        self._leaser: threading.Thread | None = None
        self._snapshot: GraphSnapshot | None = None
        self._follow_lock = threading.RLock()  # one follower (apply, replay, install) at a time
        self._swap_lock = threading.Lock()  # the swap itself, and tombstones from Redis
        self._gate = VersionGate(self._read_version)
        self._pending_tombstones: list[tuple[str, int]] = []
        self._tombstones_seen = 0
        self._tombstone_epoch: str | None = None
        self._build_requested: str | None = None
        self._builder: threading.Thread | None = None
        self._follower: threading.Thread | None = None
        self._stop = threading.Event()
        self._first_load = threading.Lock()
        self._swapped_at: float | None = None  # the first swap since the heap was released
        # Counters the tests and benchmarks read.
        self.loads = 0  # whole models read from Neo4j
        self.applies = 0  # incremental changes applied
        self.layouts = 0  # models rebuilt in memory (new partition, compaction)
        self.regroups = 0  # new partitions adopted over the same rows (no copy)
        self.heap_releases = 0  # freed heap handed back to the system after swaps
        self.lease_renewals = 0  # read leases taken or renewed
        self.last_error: str | None = None
        self.building: tuple[str, float] | None = None  # (kind, wall-clock start) of the build

    # --- reading the stored graph --------------------------------------------------------------
    def _read_version(self) -> GraphVersion:
        # The generation first, in its own query: the version query's subqueries may run in any
        # order, and a generation newer than the latest ingestion it was read with made the next
        # round take the ingestion time for a write outside the platform and rebuild the whole
        # model (live-load run 10: 3.4 GB resident, ingests unseen for 30 s).
        generation = int(self.store.read_autocommit("search_graph_generation")[0]["generation"])
        record = self.store.read_autocommit("search_graph_version")[0]
        run = record["run"]
        return (
            min(generation, int(record["generation"])),
            int(record["images"]),
            int(record["pairs"]),
            record["latest"],
            None if run is None else str(run),
            None if record["epoch"] is None else str(record["epoch"]),
        )

    def version(self) -> GraphVersion:
        return self._gate.version()

    def invalidate(self) -> None:
        with self._swap_lock:
            self._snapshot = None

    def current(self) -> GraphSnapshot | None:
        """The snapshot searches use now (for figures, not for searches)."""
        return self._snapshot

    # --- the search path -----------------------------------------------------------------------
    def get(self, diagnostics: SearchDiagnostics | None = None) -> GraphSnapshot:
        diagnostics = diagnostics or SearchDiagnostics(strategy="read-model")
        if not self.live:
            with diagnostics.stage("version_check"):
                version = self.version()
            snapshot = self._snapshot
            if snapshot is None or snapshot.version != version:
                with self._follow_lock, diagnostics.stage("follow_changes"):
                    # Read again under the lock: another search may have followed meanwhile.
                    self.follow(self._read_version())
            assert self._snapshot is not None
            return self._snapshot
        self._warm(diagnostics)
        snapshot = self._snapshot
        assert snapshot is not None
        if self._leased(snapshot):
            return snapshot
        with diagnostics.stage("deleted_check"):
            self._check_tombstones()
        return self._snapshot  # type: ignore[return-value]

    def _leased(self, snapshot: GraphSnapshot) -> bool:
        """Whether this process's read lease holds for ``snapshot``'s graph: every deletion
        published for it then waits for the lease thread to apply it before it answers."""
        lease = self._lease
        return (
            lease is not None
            and snapshot.version[5:] == (lease[0],)
            and time.monotonic() < lease[1]
        )

    def _warm(self, diagnostics: SearchDiagnostics) -> None:
        """A live process's first search loads the model; every search keeps the follower on."""
        if self._snapshot is None:
            with diagnostics.stage("wait_for_model"):
                self._load_first()
        self._start_follower()

    def search_with(
        self,
        diagnostics: SearchDiagnostics,
        search: Callable[[GraphSnapshot, SearchDiagnostics], Answer],
    ) -> Answer:
        """``search`` on the current snapshot, as after ``get``, with the Redis round trip of a
        live process's deleted check overlapping the search: the read of the latest published
        deletion is sent first and its answer taken after the search. A deletion published
        before the search started and not yet in its snapshot is then dropped from the
        snapshot, and the search runs again on it (the guarantee is ``get``'s; the second run
        happens only when a deletion lands during a search)."""
        if not self.live or self._redis is None:
            return search(self.get(diagnostics), diagnostics)
        self._warm(diagnostics)
        with self._swap_lock:
            snapshot, seen, epoch = self._snapshot, self._tombstones_seen, self._tombstone_epoch
        assert snapshot is not None
        if epoch is None or snapshot.version[5:] != (epoch,):
            # This graph's first deleted check: get() learns its Redis keys.
            return search(self.get(diagnostics), diagnostics)
        if self._leased(snapshot):
            answer = search(snapshot, diagnostics)
            # A deletion the lease thread applied during the search, or a lease that ended
            # during it (a deletion may then have answered without this process): again.
            if self._leased(snapshot) and self._tombstones_seen <= seen:
                return answer
            again = diagnostics.for_another_run()
            return search(self.get(again), again)
        try:
            with diagnostics.stage("deleted_check"):
                pending = send_latest_deletion(self._redis, epoch)
        except redis.RedisError:
            return search(self.get(diagnostics), diagnostics)  # get() reports it
        try:
            answer = search(snapshot, diagnostics)
        except BaseException:
            drop_read(self._redis, pending)
            raise
        try:
            with diagnostics.stage("deleted_check"):
                latest = read_latest_deletion(self._redis, pending)
        except redis.RedisError:
            latest = seen + 1  # unknown: get() reports it and follows the log
        if latest <= seen:
            return answer
        again = diagnostics.for_another_run()
        return search(self.get(again), again)

    def _load_first(self) -> None:
        with self._first_load:
            if self._snapshot is None:
                version = self._read_version()
                self._install(load_snapshot(self.store, version))
                self.loads += 1

    def _check_tombstones(self) -> None:
        assert self._redis is not None and self._snapshot is not None
        epoch = self._snapshot.version[5] if len(self._snapshot.version) > 5 else None
        if epoch is None:
            # A graph the platform has not logged a change of yet: its first deletion's Redis
            # keys are not known here, so the log is followed on this thread.
            self.catch_up()
            return
        try:
            latest, entries = tombstones_after(
                self._redis, epoch, self._tombstones_applied(self._snapshot, epoch)
            )
        except redis.RedisError as problem:
            # Without Redis the deletions are only in the log: follow it now, on this thread.
            log.warning("deleted keys unavailable from Redis (%s): following the log", problem)
            self.catch_up()
            return
        self._take_tombstones(epoch, latest, entries)

    def _tombstones_applied(self, snapshot: GraphSnapshot, epoch: str) -> int:
        """The latest deletion of the graph ``epoch`` in the snapshot (a graph met for the first
        time: its deletions up to the snapshot's change are in it already)."""
        with self._swap_lock:
            if epoch != self._tombstone_epoch:
                self._tombstone_epoch, self._tombstones_seen = epoch, snapshot.seq
            return self._tombstones_seen

    def _take_tombstones(self, epoch: str, latest: int, entries: list[tuple[str, int]]) -> None:
        """Drops the keys deleted up to ``latest`` (``entries``) from the snapshot."""
        with self._swap_lock:
            if latest <= self._tombstones_seen or epoch != self._tombstone_epoch:
                return
            self._pending_tombstones.extend(entries)
            self._tombstones_seen = latest
            assert self._snapshot is not None
            self._snapshot = with_tombstones(self._snapshot, entries)

    def catch_up(self) -> GraphSnapshot:
        """Follows the log now, on the caller's thread (a process's own relabel, before it
        answers); builds still run in the background in a live process."""
        with self._follow_lock:
            if self._snapshot is None:
                self._load_first()
            else:
                self.follow(self._read_version())
        assert self._snapshot is not None
        return self._snapshot

    # --- following -----------------------------------------------------------------------------
    def follow(self, version: GraphVersion) -> None:
        """Brings the snapshot to ``version``, read under the follow lock, which the caller
        holds."""
        snapshot = self._snapshot
        if snapshot is None:
            self._install(load_snapshot(self.store, version))
            self.loads += 1
            return
        generation = version[0]
        if snapshot.version[5:] != (None,) and snapshot.version[5:] != version[5:]:
            self._request(REBUILD, version, "another database (wiped or restored)")
            return
        if generation == snapshot.seq:
            if snapshot.version[1:] != version[1:]:
                # search_graph_version reads the generation first and the counts, latest
                # ingestion and run after it, not in one snapshot (read committed): a logged
                # change committing in between shows as new counts under the old generation.
                # Read again before taking it for a write outside the platform.
                again = self._read_version()
                if again[0] != generation:
                    self.follow(again)  # it was a logged change: applied, no rebuild
                elif snapshot.version[1:] != again[1:]:
                    self._request(
                        REBUILD, again,
                        f"changed outside the platform: {snapshot.version[1:]} -> {again[1:]}",
                    )  # fmt: skip
            return
        if generation < snapshot.seq or snapshot.seq <= generation - CHANGE_LOG_KEEP:
            self._request(REBUILD, version, "a restored database, or a trimmed log")
            return
        record = self.store.read_autocommit(
            "search_changes", after=snapshot.seq, limit=CHANGES_PER_ROUND
        )[0]
        changes = [c for c in record["changes"] if c is not None and c["seq"] <= generation]
        complete = bool(changes) and changes[-1]["seq"] == generation
        if not complete and len(record["changes"]) < CHANGES_PER_ROUND:
            self._request(REBUILD, version, f"generation {generation} not in the change log")
            return
        keys: list[str] = []
        for change in changes:
            kind = change["kind"]
            if kind == ChangeKind.RELOAD:
                self._request(REBUILD, version, f"reload change {change['seq']}")
                if not self.live:
                    return  # loaded on this thread, at this version
            elif kind == ChangeKind.PARTITION:
                self._request(PARTITION, version, f"partition change {change['seq']}")
            keys.extend(change["keys"] or ())
        last = changes[-1]
        # The counts the last change left, so that a later write outside the platform shows
        # as a difference from them (search_graph_version.cypher).
        target = (int(last["seq"]), last["images"], last["pairs"], *version[3:])
        try:
            self._apply(keys, target)
        except NeedsRebuild as reason:
            log.info("read model: %s; rebuilding", reason)
            self._request(REBUILD, version, str(reason))
            return
        self._maybe_compact(version)

    def _apply(self, keys: list[str], version: GraphVersion) -> None:
        snapshot = self._snapshot
        assert snapshot is not None
        unique = sorted(set(keys))
        records = [r.data() for r in self.store.read_autocommit("search_rows", keys=unique)]
        sums = self.store.read_autocommit("search_region_model")[0].data()
        self._swap(apply_rows(snapshot, unique, records, sums, version))
        self.applies += 1

    def _maybe_compact(self, version: GraphVersion) -> None:
        snapshot = self._snapshot
        assert snapshot is not None
        if snapshot.changed_rows > max(
            MIN_COMPACT_ROWS, COMPACT_FRACTION * snapshot.base_rows
        ) and self._copy_fits(snapshot):
            self._request(COMPACT, version, f"{snapshot.changed_rows} rows changed")

    def _copy_fits(self, snapshot: GraphSnapshot) -> bool:
        """Whether a second model the size of ``snapshot`` fits under the memory limit now."""
        if self.layout_memory_bytes is None:
            return True
        resident = psutil.Process().memory_info().rss
        return resident + snapshot.nbytes <= self.layout_memory_bytes

    # --- whole models --------------------------------------------------------------------------
    def _request(self, kind: str, version: GraphVersion, reason: str = "") -> None:
        if not self.live:
            self._build(kind, version)
            return
        with self._swap_lock:
            wanted = self._build_requested
            if wanted is None or _BUILD_ORDER.index(kind) < _BUILD_ORDER.index(wanted):
                self._build_requested = kind
                # Every whole-model build is visible in the log from its request on (a rebuild
                # at 223,648 takes minutes under writes and ~3 GB next to the old model).
                log.info(
                    "read model: %s requested (%s)%s, resident %d MiB",
                    kind,
                    reason or "no reason given",
                    "" if wanted is None else f" over a pending {wanted}",
                    _resident_mib(),
                )
            if self._builder is None or not self._builder.is_alive():
                self._builder = threading.Thread(
                    target=self._build_loop, name="read-model-build", daemon=True
                )
                self._builder.start()

    def _build_loop(self) -> None:
        while not self._stop.is_set():
            with self._swap_lock:
                kind, self._build_requested = self._build_requested, None
            if kind is None:
                return
            self.building = (kind, time.time())
            log.info("read model: %s build started, resident %d MiB", kind, _resident_mib())
            try:
                self._build(kind, None)
            except BaseException as problem:  # the old model keeps answering; try again later
                self.last_error = f"{type(problem).__name__}: {problem}"
                log.exception(
                    "read model: building a new model (%s) failed, resident %d MiB",
                    kind,
                    _resident_mib(),
                )
                if not isinstance(problem, Exception):
                    raise
                self._stop.wait(5.0)
                with self._swap_lock:
                    self._build_requested = self._build_requested or kind
            finally:
                self.building = None

    def _build(self, kind: str, version: GraphVersion | None) -> None:
        """A whole new model; then, under the follow lock, the changes logged since replayed
        on it and the swap."""
        started = time.monotonic()
        how = "loaded from Neo4j"
        if kind == REBUILD:
            start = version if version is not None and not self.live else self._read_version()
            built = load_snapshot(self.store, start)
            self.loads += 1
        else:
            base = self._snapshot
            assert base is not None
            assignment = None
            if kind == PARTITION:
                stored = self.store.read_autocommit("community_assignment")[0]
                assignment = (stored["keys"], stored["communities"])
            sums = self.store.read_autocommit("search_region_model")[0].data()
            if assignment is not None and not self._copy_fits(base):
                built = regroup(base, assignment, sums)
                self.regroups += 1
                how = "regrouped over the same rows (no room for a copy)"
            else:
                built = relayout(base, assignment, sums)
                self.layouts += 1
                how = "laid out in a copy"
        with self._follow_lock:
            current = self._snapshot
            if current is not None and built.seq < current.seq:
                # Replay what the follower applied meanwhile (the stored state, read now).
                record = self.store.read_autocommit(
                    "search_changes", after=built.seq, limit=CHANGE_LOG_KEEP
                )[0]
                keys = [k for c in record["changes"] if c and c["seq"] <= current.seq
                        for k in c["keys"] or ()]  # fmt: skip
                records = [r.data() for r in self.store.read_autocommit("search_rows", keys=keys)]
                sums = self.store.read_autocommit("search_region_model")[0].data()
                built = apply_rows(built, keys, records, sums, current.version)
            self._install(built)
        log.info(
            "read model: %s %s in %.1f s, %d rows, resident %d MiB",
            kind,
            how,
            time.monotonic() - started,
            len(built),
            _resident_mib(),
        )

    # --- swapping ------------------------------------------------------------------------------
    def _swap(self, snapshot: GraphSnapshot) -> None:
        with self._swap_lock:
            pending = [t for t in self._pending_tombstones if t[1] > snapshot.seq]
            self._pending_tombstones = pending
            self._snapshot = with_tombstones(snapshot, pending)
            if self._swapped_at is None:
                self._swapped_at = time.monotonic()

    def _install(self, snapshot: GraphSnapshot) -> None:
        self._swap(snapshot)

    # --- the background follower ---------------------------------------------------------------
    def _start_follower(self) -> None:
        if self._follower is not None:
            return
        with self._swap_lock:
            if self._follower is None:
                self._follower = threading.Thread(
                    target=self._follow_loop, name="read-model-follow", daemon=True
                )
                self._follower.start()
                if self.lease_s > 0:
                    self._leaser = threading.Thread(
                        target=self._lease_loop, name="read-lease", daemon=True
                    )
                    self._leaser.start()

    # --- the read lease ------------------------------------------------------------------------
    def _lease_loop(self) -> None:
        epoch: str | None = None
        while not self._stop.wait(self.lease_s / LEASE_RENEWALS):
            try:
                epoch = self._renew_lease()
            except Exception as problem:  # searches read Redis (or the log) meanwhile
                self._lease = None
                self.last_error = f"{type(problem).__name__}: {problem}"
                log.warning("read lease: renewal failed (%s); searches read deleted keys from "
                            "Redis until it is taken again", problem)  # fmt: skip
                # Not renewed again before it ended: no deletion waits on a failing process.
                self._stop.wait(self.lease_s)
        self._lease = None
        if epoch is not None and self._redis is not None:
            with contextlib.suppress(redis.RedisError):  # else it ends by itself within a lease
                end_read_lease(self._redis, epoch, self._reader)

    def _renew_lease(self) -> str | None:
        """Renews the lease with the latest deletion applied, then applies those published
        since and acknowledges them; the lease counts from before the renewal was sent. A
        reader seen for the first time is waited for by deletions from its renewal on, and
        reads every deletion published before it after that: none is missed."""
        assert self._redis is not None
        started = time.monotonic()
        snapshot = self._snapshot
        epoch = None if snapshot is None or len(snapshot.version) < 6 else snapshot.version[5]
        if snapshot is None or epoch is None:
            self._lease = None  # a graph with no logged change yet: searches check Redis
            return None
        applied = self._tombstones_applied(snapshot, epoch)
        latest = renew_read_lease(self._redis, epoch, self._reader, applied, self.lease_s)
        if latest > applied:
            entries = tombstones_between(self._redis, epoch, applied, latest)
            self._take_tombstones(epoch, latest, entries)
            if self._tombstones_seen < latest:  # another graph was swapped in meanwhile
                self._lease = None
                return epoch
            renew_read_lease(self._redis, epoch, self._reader, latest, self.lease_s)
        self._lease = (epoch, started + self.lease_s * (1 - LEASE_MARGIN))
        self.lease_renewals += 1
        return epoch

    def _follow_loop(self) -> None:
        delay = self.interval_s
        while not self._stop.wait(delay):
            try:
                with self._follow_lock:
                    self.follow(self._read_version())
                delay = self.interval_s
            except Exception as problem:  # Neo4j away: searches go on with the current model
                self.last_error = f"{type(problem).__name__}: {problem}"
                log.warning("read model: following the change log failed: %s", problem)
                delay = min(5.0, max(delay * 2, self.interval_s))
            self._release_heap()

    def _release_heap(self) -> None:
        """Hands the heap the replaced snapshots freed back to the system, once they are gone;
        without it a process under writes grew by ~550 MiB at 223,648 images (memory.py)."""
        swapped = self._swapped_at
        if swapped is None or time.monotonic() - swapped < RELEASE_HEAP_AFTER_S:
            return
        self._swapped_at = None
        if release_free_heap():
            self.heap_releases += 1

    def close(self) -> None:
        self._stop.set()

    def stats(self) -> dict[str, Any]:
        snapshot = self._snapshot
        return {
            "seq": None if snapshot is None else snapshot.seq,
            "loads": self.loads,
            "applies": self.applies,
            "layouts": self.layouts,
            "regroups": self.regroups,
            "heap_releases": self.heap_releases,
            "lease_renewals": self.lease_renewals,
            "rows": None if snapshot is None else len(snapshot),
            "live": None if snapshot is None else snapshot.live,
            "building": self._builder is not None and self._builder.is_alive(),
            "building_kind": None if self.building is None else self.building[0],
            "building_since": None if self.building is None else self.building[1],
            "last_error": self.last_error,
        }


def _resident_mib() -> int:
    return psutil.Process().memory_info().rss >> 20
