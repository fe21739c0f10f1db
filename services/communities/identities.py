"""Stable community ids across runs.

Rule: a new cluster inherits the id of a previous community when that community holds a strict
majority of the new cluster's images that were already clustered before. Several new clusters
can have their majority in the same old community (it split): the one sharing the most images
with it inherits the id, ties broken by the smaller label. Every other new cluster gets a fresh
id, never used before (ids only grow, counted by ``next_community_id`` on the run), handed out
largest cluster first. An old community that no new cluster inherits disappears (it merged
into another or dissolved).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

FIRST_COMMUNITY_ID = 1


@dataclass(frozen=True)
class IdMatch:
    ids: dict[int, int]  # detector label -> community id
    next_community_id: int  # first id never handed out
    inherited: int  # clusters that kept an old id
    fresh: int  # clusters that got a new id
    images_kept: int  # previously clustered images whose community id did not change
    images_before: int  # images that had a community before and are still in the graph


def match_community_ids(
    previous: Mapping[str, int], labels: Mapping[str, int], next_community_id: int
) -> IdMatch:
    """Community ids for the detector's labels, carried over from ``previous`` (key -> id)."""
    members_before: dict[int, Counter[int]] = defaultdict(Counter)
    sizes: Counter[int] = Counter()
    for key, label in labels.items():
        sizes[label] += 1
        old = previous.get(key)
        if old is not None:
            members_before[label][old] += 1

    candidates: list[tuple[int, int, int]] = []  # (overlap, label, old id)
    for label, overlaps in members_before.items():
        old, overlap = max(overlaps.items(), key=lambda item: (item[1], -item[0]))
        if 2 * overlap > sum(overlaps.values()):
            candidates.append((overlap, label, old))
    candidates.sort(key=lambda c: (-c[0], c[1]))

    ids: dict[int, int] = {}
    taken: set[int] = set()
    for _, label, old in candidates:
        if old not in taken:
            ids[label] = old
            taken.add(old)
    inherited = len(ids)

    next_id = max(next_community_id, FIRST_COMMUNITY_ID, max(previous.values(), default=0) + 1)
    for label in sorted(sizes, key=lambda lab: (-sizes[lab], lab)):
        if label not in ids:
            ids[label] = next_id
            next_id += 1

    images_before = sum(1 for key in labels if key in previous)
    images_kept = sum(1 for key, label in labels.items() if previous.get(key) == ids[label])
    return IdMatch(
        ids=ids,
        next_community_id=next_id,
        inherited=inherited,
        fresh=len(ids) - inherited,
        images_kept=images_kept,
        images_before=images_before,
    )
