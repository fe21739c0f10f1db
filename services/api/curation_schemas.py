"""Request and response models of the delete, relabel and audit routes
(``services/api/blueprints/curation.py``); kept apart from ``schemas.py`` on purpose."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from services.api.schemas import MAX_OFFSET, Model
from services.curation.relabel import ALLOWED_FINDINGS
from services.retrieval.contract import NO_FINDING


class DeletedImage(Model):
    key: str
    file: Literal["deleted", "kept", "none"] = Field(
        description="`deleted`: the upload kept with add=true was removed from the upload "
        "folder; `kept`: the file lies under another data root and is yours, so it was left in "
        "place; `none`: no local file."
    )


class DeletionResponse(Model):
    deleted: list[DeletedImage] = Field(description="The images removed, by key.")
    images: int = Field(description="How many images were removed.")
    edges_removed: int = Field(description="SIMILAR pairs removed with them.")
    edges_added: int = Field(
        description="SIMILAR pairs added to re-link former neighbours left with fewer than k."
    )
    relinked: int = Field(description="Former neighbours that got new SIMILAR edges.")
    communities_updated: list[int] = Field(description="Communities whose sums changed.")
    communities_removed: list[int] = Field(description="Communities left empty and removed.")
    files: str = Field(description="What happened to the image files, in words.")
    audit_id: str | None = Field(description="The audit record of this deletion.")


class PatientDeletionRequest(Model):
    patient_id: str = Field(
        description="The patient's raw id as in the labels or the DICOM PatientID. Only its "
        "HMAC is computed; the id is never stored, logged or returned.",
        min_length=1,
        max_length=256,
    )


class RelabelRequest(Model):
    findings: list[Annotated[str, Field(max_length=64)]] | None = Field(
        description=f"Positive findings, from the vocabulary: {', '.join(ALLOWED_FINDINGS)} "
        f'(any letter case; `_` or a space). `[]` or `["{NO_FINDING}"]` = none; `null` clears '
        "the labels (the image becomes unlabelled).",
        max_length=32,
    )


class RelabelResponse(Model):
    key: str
    before: list[str] | None = Field(description="The findings before (null: unlabelled).")
    findings: list[str] | None = Field(description="The findings now (null: unlabelled).")
    community: int | None = Field(description="The community whose histogram was updated.")
    changed: bool = Field(description="False when the image already had these findings.")
    audit_id: str | None = Field(description="The audit record (null when nothing changed).")


class AuditQuery(Model):
    limit: int = Field(50, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)
    action: Literal["delete", "relabel"] | None = Field(None, description="Only this action.")


class AuditRecord(Model):
    id: str
    at: str = Field(description="When (ISO 8601, UTC).")
    action: Literal["delete", "relabel"]
    actor: str = Field(description='The API key id, or "cli".')
    images: int = Field(description="How many images the action touched.")
    key_hashes: list[str] = Field(
        description="HMAC-SHA256 of each image key with the installation's audit salt "
        "(<home>/secrets/audit-salt): no key, patient id or file name is kept."
    )


class AuditList(Model):
    total: int
    records: list[AuditRecord] = Field(description="Newest first.")


class KeyDescription(Model):
    id: str | None = Field(description="The API key's id (null when access control is off).")
    name: str | None
    scopes: list[str] = Field(description="`read`, and `write` for keys that may change data.")
