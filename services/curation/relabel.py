"""Correcting an image's findings: the image, its community's finding histogram and the graph
generation (so the search caches' finding masks are rebuilt), in one transaction. Edges and
communities do not change."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from neo4j import ManagedTransaction, unit_of_work

from services.communities.statistics import finding_list
from services.curation.deletion import key_hash
from services.encoder.labels import FINDINGS_NIH
from services.graph.changes import ChangeKind, record_change
from services.graph.cypher import load_cypher
from services.graph.store import GraphStore
from services.retrieval.contract import NO_FINDING, UnknownImage

MAX_FINDINGS = 32
MAX_FINDING_LENGTH = 64
# The controlled vocabulary: the checkpoint's findings (the 14 of NIH ChestX-ray14) and "No
# Finding". Anything else would reach the finding filter and the community histograms.
ALLOWED_FINDINGS: tuple[str, ...] = (*FINDINGS_NIH, NO_FINDING)


def _folded(name: str) -> str:
    """Case, spaces and underscores do not matter: "pleural thickening" = "Pleural_Thickening"."""
    return " ".join(name.replace("_", " ").split()).casefold()


_CANONICAL = {_folded(name): name for name in ALLOWED_FINDINGS}


class FindingsError(ValueError):
    """A findings list that cannot be stored (says which entry and why)."""


@dataclass(frozen=True)
class RelabelReport:
    key: str
    before: list[str] | None  # None: the image had no labels (unknown)
    after: list[str] | None  # None: labels cleared (unlabelled)
    community: int | None
    changed: bool
    audit_id: str | None
    generation: int | None
    change_seq: int | None = None  # the logged change (services/graph/changes.py)


def canonical_finding(raw: object) -> str:
    """The vocabulary's spelling of ``raw``; FindingsError naming the allowed values otherwise."""
    if not isinstance(raw, str):
        raise FindingsError(f"a finding must be a string, got {type(raw).__name__}")
    name = _CANONICAL.get(_folded(raw)) if len(raw) <= MAX_FINDING_LENGTH else None
    if name is None:
        shown = raw if len(raw) <= MAX_FINDING_LENGTH and raw.isprintable() else "(not shown)"
        raise FindingsError(f"unknown finding {shown!r}; allowed: {', '.join(ALLOWED_FINDINGS)}")
    return name


def normalise_findings(findings: Iterable[str] | None) -> list[str] | None:
    """Positive findings as stored: in the vocabulary's spelling, each once, in the order given;
    ``[]`` or ``["No Finding"]`` alone means no positive finding; ``None`` clears the labels
    (the image becomes unlabelled)."""
    if findings is None:
        return None
    names: list[str] = []
    for raw in findings:
        name = canonical_finding(raw)
        if name not in names:
            names.append(name)
    if NO_FINDING in names:
        if len(names) > 1:
            raise FindingsError(f"'{NO_FINDING}' cannot be combined with positive findings")
        return []
    if len(names) > MAX_FINDINGS:
        raise FindingsError(f"at most {MAX_FINDINGS} findings per image")
    return names


def relabel_image(
    store: GraphStore, key: str, findings: Iterable[str] | None, *, actor: str, salt: bytes
) -> RelabelReport:
    """Sets the image's findings (``None``: clears them); raises ``UnknownImage`` for a key
    that is not stored and ``FindingsError`` for findings outside the vocabulary. Relabelling
    to the same findings writes nothing."""
    names = normalise_findings(findings)
    with store.driver.session(database=store.database) as session:
        return session.execute_write(_relabel_transaction, key, names, actor, salt)


def _run(tx: ManagedTransaction, name: str, **params: Any) -> list[dict[str, Any]]:
    return [record.data() for record in tx.run(load_cypher(name), params)]


@unit_of_work(metadata={"medgraph": "relabel-image"})
def _relabel_transaction(
    tx: ManagedTransaction, key: str, names: list[str] | None, actor: str, salt: bytes
) -> RelabelReport:
    rows = _run(tx, "relabel_read", key=key)
    if not rows:
        raise UnknownImage(key)
    before = rows[0]["findings"]
    if (None if before is None else list(before)) == names:
        return RelabelReport(key, names, names, rows[0]["community"], False, None, None)
    generation = int(_run(tx, "graph_generation_bump")[0]["generation"])
    locked = _run(tx, "community_lock_latest_run")  # serialised with ingest-time assignment
    row = _run(tx, "relabel_read", key=key)[0]
    before, community = row["findings"], row["community"]
    histogram_names: list[str] = []
    histogram_counts: list[int] = []
    if community is not None and locked:
        stored = _run(tx, "community_sums", ids=[community])
        if stored:
            counts = Counter(
                dict(zip(stored[0]["finding_names"] or [], stored[0]["finding_counts"] or [],
                         strict=True))
            )  # fmt: skip
            counts.subtract(finding_list(before))
            counts.update(finding_list(names))
            histogram = sorted((+counts).items(), key=lambda item: (-item[1], item[0]))
            histogram_names = [name for name, _ in histogram]
            histogram_counts = [count for _, count in histogram]
        else:
            community = None
    _run(
        tx,
        "relabel_write",
        key=key,
        findings=names,
        community=community if locked else None,
        names=histogram_names,
        counts=histogram_counts,
    )
    audit_id = f"rel-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    _run(tx, "audit_record_create", id=audit_id, action="relabel", actor=actor, images=1,
         key_hashes=[key_hash(salt, key)], generation=generation)  # fmt: skip
    change_seq = record_change(lambda name, **params: _run(tx, name, **params), ChangeKind.ROWS,
                               [key]).seq  # fmt: skip
    return RelabelReport(
        key,
        None if before is None else list(before),
        names,
        row["community"],
        True,
        audit_id,
        generation,
        change_seq,
    )
