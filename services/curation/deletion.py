"""Deleting images, one, several or a whole patient's, in one transaction that keeps the graph
exact.

What one deletion does, all inside a single Neo4j write transaction (so an interrupted deletion
leaves the old state or the new one, never half):

1. bump the graph generation (``graph_generation_bump``): its write lock serialises deletions
   and relabels, and the new value changes the graph version the in-process search caches are
   keyed by; take the assignment lock of the latest clustering run as ingest-time assignment
   does;
2. read the images, their edges and their neighbours' edge counts;
3. re-link every linked former neighbour left with fewer than ``min(k, linked images - 1)``
   edges by the incremental-ingest rule: its ``knn_index_candidates`` nearest linked images from
   the vector index plus the SIMILAR neighbours of its k nearest, re-ranked by the exact cosine
   of the stored embeddings (``ingest_vector_candidates``); its k best (deleted images excluded)
   become edges where they are not already;
4. remove the nodes (and their patients when no image is left), write the new edges, refresh
   the touched images' ``knn_floor``;
5. update the communities: size, finding histogram and centroid of the deleted images'
   communities; ``sigma_tot`` and ``internal_weight`` by every removed and added edge whose two
   ends have a community, and ``m`` on the latest run by the same edges (the invariant of
   ``services.communities.freshness``: the sums describe the subgraph of images with a
   community); communities left empty are deleted;
6. write an audit record (actor, number of images, salted key hashes) and a removal mark for
   each upload file to delete.

After the commit, files of deleted images that lie under the upload folder are removed (marks
left by a crash in between are finished by the next deletion); files elsewhere are the
user's and stay.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from neo4j import ManagedTransaction, unit_of_work

from services.communities.job import ABANDONED_AFTER
from services.communities.statistics import CommunitySums, finding_list
from services.config import Settings
from services.graph.changes import Change, ChangeKind, publish_tombstones, record_change
from services.graph.cypher import load_cypher
from services.graph.store import GraphStore
from services.ingest.pipeline import patient_key as hmac_patient_key
from services.privacy import open_source
from services.secrets import patient_key_secret

log = logging.getLogger(__name__)

# Shown in ``SHOW TRANSACTIONS`` (the fault tests find a deletion in flight by it).
TRANSACTION_METADATA = {"medgraph": "delete-images"}
# Most vector-index candidates asked for one neighbour while deleted images thin them.
MAX_INDEX_CANDIDATES = 10_000
# Pending images per vector-index query round trip (as in incremental ingest).
INDEX_QUERY_CHUNK = 256
FILE_DELETED, FILE_KEPT, FILE_NONE = "deleted", "kept", "none"


class DeletionRefused(RuntimeError):
    """A deletion that cannot run now (a clustering run is writing the communities)."""


@dataclass
class DeletionReport:
    requested: int
    deleted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    edges_removed: int = 0
    edges_added: int = 0
    relinked: int = 0  # former neighbours that got new edges
    communities_updated: list[int] = field(default_factory=list)
    communities_removed: list[int] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # key -> deleted | kept | none
    audit_id: str | None = None
    generation: int | None = None
    change: Change | None = None  # the logged change (services/graph/changes.py)
    seconds: float = 0.0
    stage_ms: dict[str, float] = field(default_factory=dict)  # inside the transaction

    @property
    def files_deleted(self) -> int:
        return sum(1 for outcome in self.files.values() if outcome == FILE_DELETED)

    @property
    def files_kept(self) -> int:
        return sum(1 for outcome in self.files.values() if outcome == FILE_KEPT)

    def files_note(self) -> str:
        parts = []
        if self.files_deleted:
            parts.append(f"{self.files_deleted} uploaded file(s) deleted from the upload folder")
        if self.files_kept:
            parts.append(
                f"{self.files_kept} file(s) under other data roots left in place: they are "
                "yours to remove"
            )
        return "; ".join(parts) or "no stored file was involved"


def key_hash(salt: bytes, key: str) -> str:
    """The salted hash an audit record keeps instead of an image key."""
    return hmac.new(salt, key.encode("utf-8"), hashlib.sha256).hexdigest()


def upload_folder(settings: Settings) -> Path:
    """Where the API keeps uploads sent with add=true (``jobs.keep_upload_and_ingest``)."""
    return Path(settings.api_upload_dir or Path(settings.data_roots[0]) / "uploads")


def under_folder(source: str | None, folder: Path) -> Path | None:
    """The source as a path when it lies in ``folder`` (links resolved), else None."""
    if not source or ("://" in source and not source.startswith("file://")):
        return None
    path = Path(source.removeprefix("file://"))
    try:
        resolved = path.resolve()
        root = folder.resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    return resolved if resolved.is_relative_to(root) else None


def patient_image_keys(store: GraphStore, patient_key: str) -> list[str]:
    return sorted(store.query("deletion_patient_images", patient_key=patient_key)[0]["keys"])


def delete_patient(
    store: GraphStore, settings: Settings, patient_id: str, *, actor: str, salt: bytes
) -> DeletionReport:
    """Deletes every image of a patient, named by the raw id: only its HMAC key is computed and
    used (the raw id is neither stored nor logged nor returned). The keys are looked up inside
    the deleting transaction, so an image of the patient stored just before is not left."""
    if not patient_id or not patient_id.strip():
        raise ValueError("the patient id is empty")
    key = hmac_patient_key(patient_key_secret(settings), patient_id)
    return delete_images(store, settings, [], actor=actor, salt=salt, patient_key=key)


def delete_images(
    store: GraphStore,
    settings: Settings,
    keys: Iterable[str],
    *,
    actor: str,
    salt: bytes,
    patient_key: str | None = None,
) -> DeletionReport:
    """Deletes the stored images among ``keys`` (and every image of ``patient_key``, the HMAC
    key) in one transaction; unknown keys are reported in ``missing`` and change nothing (none
    stored: nothing is written at all)."""
    started = time.monotonic()
    unique = list(dict.fromkeys(keys))
    request = _DeleteRequest(settings, unique, actor, salt, upload_folder(settings), patient_key)
    with store.driver.session(database=store.database) as session:
        try:
            report = session.execute_write(_delete_transaction, request)
        except _NothingDeleted as nothing:
            report = nothing.report
    if report.deleted:
        # Before the caller answers: no API process returns these keys from now on.
        assert report.change is not None
        publish_tombstones(settings, report.deleted, report.change)
        finish_file_deletions(store, settings)
    report.seconds = time.monotonic() - started
    return report


def finish_file_deletions(store: GraphStore, settings: Settings) -> int:
    """Removes the upload files of committed deletions (also those a crash left); returns how
    many files were removed. A key stored again since (re-ingested) keeps its file."""
    folder = upload_folder(settings)
    done: list[str] = []
    removed = 0
    for record in store.query("deletion_file_marks"):
        if not record["stored"]:
            path = under_folder(record["path"], folder)
            if path is not None and path.is_file():
                try:
                    path.unlink()
                    removed += 1
                except OSError as problem:
                    log.warning("cannot remove an uploaded file of a deleted image: %s", problem)
                    continue
        done.append(record["key"])
    if done:
        store.query("deletion_file_unmark", keys=done)
    return removed


Runner = Callable[..., list[dict[str, Any]]]


def _run(tx: ManagedTransaction, name: str, **params: Any) -> list[dict[str, Any]]:
    return [record.data() for record in tx.run(load_cypher(name), params)]


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


class _NothingDeleted(Exception):
    """Raised inside the deleting transaction to roll it back when, under the locks, none of
    its images is stored any more."""

    def __init__(self, report: DeletionReport) -> None:
        super().__init__("nothing to delete")
        self.report = report


@dataclass(frozen=True)
class _DeleteRequest:
    settings: Settings
    keys: list[str]
    actor: str
    salt: bytes
    uploads: Path
    patient_key: str | None = None


@unit_of_work(metadata=TRANSACTION_METADATA)
def _delete_transaction(tx: ManagedTransaction, request: _DeleteRequest) -> DeletionReport:
    """The whole deletion; the driver may run it again after a transient error, so it keeps no
    state outside the report it returns."""
    stage_ms: dict[str, float] = {}

    def run(name: str, **params: Any) -> list[dict[str, Any]]:
        clock = time.perf_counter()
        rows = _run(tx, name, **params)
        stage_ms[name] = stage_ms.get(name, 0.0) + (time.perf_counter() - clock) * 1000.0
        return rows

    keys = list(request.keys)
    if request.patient_key is not None:
        patient = run("deletion_patient_images", patient_key=request.patient_key)
        keys = list(dict.fromkeys(keys + sorted(patient[0]["keys"])))
    report = DeletionReport(requested=len(keys), stage_ms=stage_ms)
    if not keys or not run("deletion_stored_keys", keys=keys)[0]["keys"]:
        report.missing = sorted(keys)
        return report  # nothing stored: no lock taken, nothing written
    report.generation = int(run("graph_generation_bump")[0]["generation"])
    if _clustering_in_progress(run):
        raise DeletionRefused(
            "a clustering run is writing the communities; delete after it has finished"
        )
    locked = run("community_lock_latest_run")
    latest_run = locked[0] if locked else None
    # Read again under the locks: committed values that no one else changes before the commit.
    images = run("deletion_read_images", keys=keys)
    if not images:
        # A concurrent deletion of the same images committed first: roll back (the generation
        # bump included), so no empty audit record is written.
        report.generation = None
        report.missing = sorted(keys)
        raise _NothingDeleted(report)
    deleted = {row["key"] for row in images}
    report.deleted = sorted(deleted)
    report.missing = sorted(set(keys) - deleted)
    settings = request.settings
    k = settings.knn_k

    community_of: dict[str, int | None] = {}
    removed: dict[tuple[str, str], float] = {}
    lost: Counter[str] = Counter()
    neighbour_edges: dict[str, int] = {}
    neighbour_linked: dict[str, bool] = {}
    for image in images:
        community_of[image["key"]] = image["community"]
        for edge in image["edges"]:
            other = edge["key"]
            community_of[other] = edge["community"]
            removed[_pair(image["key"], other)] = float(edge["weight"] or 0.0)
            if other not in deleted:
                lost[other] += 1
                neighbour_edges[other] = int(edge["edges"])
                neighbour_linked[other] = bool(edge["linked"])
    report.edges_removed = len(removed)

    # Images left after the deletion (those still waiting for their edges included: they get
    # linked by their ingest). A count-store read: scanning for linked images would cost O(n).
    remaining = int(run("deletion_image_count")[0]["images"]) - len(deleted)
    target = min(k, remaining - 1)
    needy = sorted(
        key
        for key, count in lost.items()
        if neighbour_linked[key] and neighbour_edges[key] - count < target
    )
    added = _relink(run, settings, needy, deleted, target) if needy else {}
    report.edges_added = len(added)
    report.relinked = len({key for pair in added for key in pair} & set(needy))

    # Communities of the new edges' far ends, not read so far.
    unknown = sorted({key for pair in added for key in pair} - community_of.keys())
    for row in run("deletion_edge_lists", keys=unknown) if unknown else []:
        community_of[row["key"]] = row["community"]

    run("deletion_delete_images", keys=report.deleted)
    if added:
        rows = [{"a": a, "b": b, "weight": weight} for (a, b), weight in sorted(added.items())]
        run("ingest_write_edges", rows=rows)
    # Every linked image that lost or gained an edge: its k-th largest weight may have changed.
    touched = {key for key, is_linked in neighbour_linked.items() if is_linked}
    touched |= {key for pair in added for key in pair}
    if touched - deleted:
        run("ingest_refresh_knn_floor", keys=sorted(touched - deleted), k=k)

    if latest_run is not None:
        _update_communities(run, report, images, removed, added, community_of, latest_run["id"])

    marks = []
    secret = patient_key_secret(request.settings)
    for image in images:
        source = open_source(secret, image["source"])
        path = under_folder(source, request.uploads)
        if path is not None:
            marks.append({"key": image["key"], "path": str(path)})
            report.files[image["key"]] = FILE_DELETED
        elif source and ("://" not in source or source.startswith("file://")):
            report.files[image["key"]] = FILE_KEPT
        else:
            report.files[image["key"]] = FILE_NONE
    if marks:
        run("deletion_file_mark", rows=marks)
    report.audit_id = f"del-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    run(
        "audit_record_create",
        id=report.audit_id,
        action="delete",
        actor=request.actor,
        images=len(deleted),
        key_hashes=sorted(key_hash(request.salt, key) for key in deleted),
        generation=report.generation,
    )
    # The search side re-reads every image whose node, edges or community changed.
    changed = deleted | set(lost) | {key for pair in added for key in pair}
    report.change = record_change(run, ChangeKind.ROWS, changed)
    return report


def _relink(
    run: Runner, settings: Settings, needy: list[str], deleted: set[str], target: int
) -> dict[tuple[str, str], float]:
    """New edges for the former neighbours left short, by the incremental-ingest rule: each
    one's k best among its vector-index candidates and their two-hop neighbours (exact cosines),
    deleted images left out; those it is not linked to yet become edges."""
    k = settings.knn_k
    existing = {
        row["key"]: set(row["neighbours"]) for row in run("deletion_edge_lists", keys=needy)
    }
    fetch = max(settings.knn_index_candidates, k + 1) + len(deleted)
    found: dict[str, dict[str, float]] = {key: {} for key in needy}
    pending = list(needy)
    while pending:
        fetch = min(fetch, MAX_INDEX_CANDIDATES)
        for start in range(0, len(pending), INDEX_QUERY_CHUNK):
            chunk = pending[start : start + INDEX_QUERY_CHUNK]
            rows = run("ingest_vector_candidates", keys=chunk, candidates=fetch, expand=k)
            for row in rows:
                if row["neighbour"] not in deleted:
                    found[row["key"]][row["neighbour"]] = float(row["cosine"])
        # Too few candidates once the deleted images are left out: ask the index for more.
        pending = [key for key in pending if len(found[key]) < target]
        if fetch >= MAX_INDEX_CANDIDATES:
            break
        fetch *= 4
    added: dict[tuple[str, str], float] = {}
    for key in needy:
        ranked = sorted(found[key].items(), key=lambda item: (-item[1], item[0]))
        for neighbour, cosine in ranked[:k]:
            if cosine >= settings.min_cosine and neighbour not in existing.get(key, ()):
                added[_pair(key, neighbour)] = cosine
    return added


def _update_communities(
    run: Runner,
    report: DeletionReport,
    images: list[dict[str, Any]],
    removed: dict[tuple[str, str], float],
    added: dict[tuple[str, str], float],
    community_of: dict[str, int | None],
    run_id: str,
) -> None:
    ids = sorted({int(c) for c in community_of.values() if c is not None})
    sums = {
        int(row["id"]): CommunitySums.from_stored(row) for row in run("community_sums", ids=ids)
    }
    touched: set[int] = set()
    delta_m = 0.0
    for edges, sign in ((removed, -1.0), (added, 1.0)):
        for (a, b), weight in edges.items():
            ca, cb = community_of.get(a), community_of.get(b)
            if ca is None or cb is None:
                continue  # not in the sums: an image still waiting for its assignment
            delta_m += sign * weight
            for community in (int(ca), int(cb)):
                if community in sums:
                    sums[community].sigma_tot += sign * weight
                    touched.add(community)
            if ca == cb and int(ca) in sums:
                sums[int(ca)].internal_weight += sign * weight
    for image in images:
        if image["community"] is None:
            continue
        entry = sums.get(int(image["community"]))
        if entry is None:
            log.warning("the community of a deleted image has no :Community node")
            continue
        _remove_member(entry, image["embedding"], image["findings"])
        touched.add(entry.id)
    now = datetime.now(UTC)
    kept = sorted(c for c in touched if sums[c].size > 0)
    empty = sorted(c for c in touched if sums[c].size <= 0)
    if kept:
        rows = [{"id": c, "properties": {**sums[c].properties(), "updated_at": now}} for c in kept]
        run("community_write_communities", rows=rows)
    if empty:
        run("community_delete_ids", ids=empty)
    run("deletion_run_update", id=run_id, delta_m=delta_m, images=len(report.deleted))
    report.communities_updated = kept
    report.communities_removed = empty


def _remove_member(
    entry: CommunitySums, embedding: Sequence[float] | None, findings: Sequence[str] | None
) -> None:
    entry.size -= 1
    if entry.size <= 0:
        entry.size = 0
        return  # the community goes
    if embedding is not None and entry.embedding_sum is not None:
        entry.embedding_sum = entry.embedding_sum - np.asarray(embedding, dtype=np.float64)
    entry.findings.subtract(finding_list(findings))
    entry.findings = +entry.findings  # drops the names whose count reached 0


def _clustering_in_progress(run: Runner) -> bool:
    now = datetime.now(UTC)
    for row in run("community_runs_in_progress"):
        started = row["started_at"]
        if started is not None and now - started.to_native() < ABANDONED_AFTER:
            return True
    return False
