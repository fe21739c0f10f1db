"""Deleting images and patients, correcting findings, and the audit trail of both
(``services/curation``). Every route here changes data or shows who did, so each needs a write
key, except ``/auth/key`` (what the presented key may do, for the dashboard)."""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, g

from services.api.blueprints.images import thumbnails
from services.api.context import api_context
from services.api.curation_schemas import (
    AuditList,
    AuditQuery,
    AuditRecord,
    DeletedImage,
    DeletionResponse,
    KeyDescription,
    PatientDeletionRequest,
    RelabelRequest,
    RelabelResponse,
)
from services.api.errors import ApiError
from services.api.routing import operation
from services.curation.audit import list_audit
from services.curation.deletion import (
    DeletionRefused,
    DeletionReport,
    delete_images,
    delete_patient,
)
from services.curation.relabel import FindingsError, relabel_image
from services.retrieval.contract import UnknownImage
from services.secrets import audit_salt

curation_bp = Blueprint("curation", __name__, url_prefix="/api/v1")


def _actor() -> str:
    key = g.get("api_key")
    return key.id if key is not None else "api"


def _deleted(deletion: Callable[[], DeletionReport]) -> DeletionReport:
    try:
        return deletion()
    except DeletionRefused as problem:
        raise ApiError(409, str(problem)) from None


def _response(report: DeletionReport) -> DeletionResponse:
    for key in report.deleted:
        thumbnails.discard(key)
    deleted = [
        DeletedImage(key=key, file=report.files.get(key, "none"))  # type: ignore[arg-type]
        for key in report.deleted
    ]
    return DeletionResponse(
        deleted=deleted,
        images=len(report.deleted),
        edges_removed=report.edges_removed,
        edges_added=report.edges_added,
        relinked=report.relinked,
        communities_updated=report.communities_updated,
        communities_removed=report.communities_removed,
        files=report.files_note(),
        audit_id=report.audit_id,
    )


@operation(
    curation_bp,
    "/images/<key>",
    method="DELETE",
    scope="write",
    summary="Delete one image: node, edges, community sums, caches and an uploaded file",
    tag="curation",
    response=DeletionResponse,
    errors=(404, 409),
    description="One transaction: the node and its SIMILAR edges go, former neighbours left with "
    "fewer than k edges are re-linked to their next nearest images, the community sums and m "
    "are updated (an emptied community is removed), and an audit record is written. A file "
    "kept from an upload (add=true) is deleted; files under other data roots are left in place "
    "(the response says so). Deleting again answers 404 and changes nothing.",
)
def delete_image(key: str) -> DeletionResponse:
    context = api_context()
    actor, salt = _actor(), audit_salt(context.settings)
    report = _deleted(
        lambda: delete_images(context.store, context.settings, [key], actor=actor, salt=salt)
    )
    if not report.deleted:
        raise ApiError(404, f"no stored image has the key {key!r}")
    return _response(report)


@operation(
    curation_bp,
    "/patients/delete",
    method="POST",
    scope="write",
    summary="Delete every image of a patient, named by the raw patient id",
    tag="curation",
    body=PatientDeletionRequest,
    response=DeletionResponse,
    errors=(400, 404, 409, 415, 422),
    description="The server computes the patient's HMAC key from `patient_id` and deletes "
    "every image with that key as `DELETE /images/<key>` does, in one transaction. The raw id "
    "travels in the body (never in the URL, so no access log holds it) and is never stored, "
    "logged or returned.",
)
def delete_patient_images(body: PatientDeletionRequest) -> DeletionResponse:
    context = api_context()
    if not body.patient_id.strip():
        raise ApiError(422, "the patient id is empty")
    actor, salt, raw = _actor(), audit_salt(context.settings), body.patient_id
    report = _deleted(
        lambda: delete_patient(context.store, context.settings, raw, actor=actor, salt=salt)
    )
    if not report.deleted:
        raise ApiError(404, "no stored image belongs to that patient")
    return _response(report)


@operation(
    curation_bp,
    "/images/<key>",
    method="PATCH",
    scope="write",
    summary="Correct an image's findings",
    tag="curation",
    body=RelabelRequest,
    response=RelabelResponse,
    errors=(400, 404, 415, 422),
    description="Sets the image's positive findings and updates its community's finding "
    "histogram; edges and communities do not change. The next search's `finding` filter sees "
    "the new findings.",
)
def relabel(key: str, body: RelabelRequest) -> RelabelResponse:
    context = api_context()
    try:
        report = relabel_image(
            context.store, key, body.findings, actor=_actor(), salt=audit_salt(context.settings)
        )
    except FindingsError as problem:
        raise ApiError(422, f"invalid findings: {problem}") from None
    except UnknownImage:
        raise ApiError(404, f"no stored image has the key {key!r}") from None
    if report.changed:  # this process's next search shows it; the others' within a second
        context.retrieval.read_model.catch_up()
    return RelabelResponse(
        key=report.key,
        before=report.before,
        findings=report.after,
        community=report.community,
        changed=report.changed,
        audit_id=report.audit_id,
    )


@operation(
    curation_bp,
    "/audit",
    scope="write",
    summary="The audit records of deletions and relabels, newest first",
    tag="curation",
    query=AuditQuery,
    response=AuditList,
    errors=(422,),
)
def audit(query: AuditQuery) -> AuditList:
    page = list_audit(
        api_context().store, action=query.action, limit=query.limit, offset=query.offset
    )
    return AuditList(
        total=page.total, records=[AuditRecord.model_validate(r) for r in page.records]
    )


@operation(
    curation_bp,
    "/auth/key",
    scope="read",
    summary="What the presented API key may do (its id, name and scopes)",
    tag="auth",
    response=KeyDescription,
)
def presented_key() -> KeyDescription:
    key = g.get("api_key")
    if key is None:
        return KeyDescription(id=None, name=None, scopes=["read", "write"])
    scopes = sorted({"read", *key.scopes})
    return KeyDescription(id=key.id, name=key.name, scopes=scopes)
