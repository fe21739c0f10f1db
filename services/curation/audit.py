"""Reading the audit records that deletions and relabels leave (``cypher/audit_record_*``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.graph.store import GraphStore

AUDIT_ACTIONS = ("delete", "relabel")
CLI_ACTOR = "cli"


@dataclass(frozen=True)
class AuditPage:
    total: int
    records: list[dict[str, Any]]  # id, at, action, actor, images, key_hashes


def list_audit(
    store: GraphStore, *, action: str | None = None, limit: int = 50, offset: int = 0
) -> AuditPage:
    if action is not None and action not in AUDIT_ACTIONS:
        raise ValueError(f"action must be one of {AUDIT_ACTIONS}, got {action!r}")
    record = store.query("audit_record_list", action=action, skip=offset, limit=limit)[0]
    return AuditPage(int(record["total"]), list(record["records"]))
