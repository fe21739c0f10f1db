"""DICOMweb (DICOM PS3.18) under ``/dicomweb``: STOW-RS in, QIDO-RS and WADO-RS rendered out,
and similar-image search by a stored instance. Conformance: ``services/api/README.md``.

Everything the archive knows of an instance's identity is a pseudonym (``services.privacy``):
the UIDs QIDO-RS lists are the ones kept after de-identification, and no PHI attribute can be
queried or returned. Received instances go through ``services.ingest.dicom_intake``, the same
path as the PACS feed, and are embedded by the Celery workers.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, jsonify, request
from pydantic import Field

from services.api.blueprints.images import rendered_png
from services.api.blueprints.jobs import start_ingest, under_data_roots
from services.api.blueprints.search import prepare_stored
from services.api.context import ApiContext, api_context
from services.api.errors import ApiError
from services.api.routing import operation
from services.api.schemas import Model, RerankName, SearchParameters, StrategyName
from services.encoder.imaging import DecodeBusy
from services.ingest.dicom_intake import ReceivedInstance, RefusedInstance, receive_instance
from services.secrets import patient_key_secret

dicomweb_bp = Blueprint("dicomweb", __name__, url_prefix="/dicomweb")
DICOM_JSON = "application/dicom+json"
PREFIX = "/dicomweb"
# At most this many instances in one STOW-RS request (the byte budget, api_max_upload_bytes,
# applies too): every instance is decoded before the answer, so the count bounds its time.
MAX_STOW_INSTANCES = 500
QIDO_DEFAULT_LIMIT = 100
QIDO_MAX_LIMIT = 1000
# Failure reasons of PS3.18 (STOW-RS) / PS3.4 (C-STORE).
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
# The private block that carries medgraph's search results in DICOM JSON (PS3.5 7.8.1).
PRIVATE_CREATOR = "MEDGRAPH 1"

# QIDO-RS matching keys: keyword -> (tag, the :Image property it matches).
MATCH_KEYS = {
    "StudyInstanceUID": ("0020000D", "study"),
    "SeriesInstanceUID": ("0020000E", "series"),
    "SOPInstanceUID": ("00080018", "sop"),
    "Modality": ("00080060", "modality"),
}
QIDO_CONTROLS = ("limit", "offset", "includefield", "fuzzymatching")


# --- STOW-RS ----------------------------------------------------------------------------------
def _store(study: str | None) -> Response:
    context = api_context()
    parts = multipart_related_parts()
    if not parts:
        raise ApiError(400, "the multipart/related body holds no DICOM instance")
    if len(parts) > MAX_STOW_INSTANCES:
        raise ApiError(
            413, f"{len(parts)} instances in one request, over the limit of {MAX_STOW_INSTANCES}"
        )
    secret = patient_key_secret(context.settings)
    stored: list[ReceivedInstance] = []
    failed: list[dict[str, Any]] = []
    for position, (media_type, data) in enumerate(parts, 1):
        name = f"instance {position} of {len(parts)}"
        if media_type not in ("application/dicom", ""):
            failed.append(_failure(CANNOT_UNDERSTAND, f"{name}: the part is {media_type}, "
                                   "not application/dicom"))  # fmt: skip
            continue
        try:
            received = receive_instance(
                data, name, context.settings, secret,
                limits=context.read_limits, decode_slot=context.decode_gate.slot,
            )  # fmt: skip
        except RefusedInstance as refused:
            code = OUT_OF_RESOURCES if "over the limit" in refused.reason else CANNOT_UNDERSTAND
            failed.append(_failure(code, refused.reason))
            continue
        except DecodeBusy as busy:
            failed.append(_failure(OUT_OF_RESOURCES, f"{name}: {busy}; send it again"))
            continue
        if study is not None and received.identity.study_uid != study:
            # PS3.18 10.5: an instance of another study than the URL's is refused (kept copies
            # are harmless: nothing is ingested from them).
            failed.append(_failure(0xA900, f"{name}: the instance belongs to another study",
                                   received))  # fmt: skip
            continue
        stored.append(received)
    if stored:
        paths = [under_data_roots(context, str(item.path), "DICOM archive") for item in stored]
        start_ingest(context, paths, None)
    body: dict[str, Any] = {}
    if study is not None or len({item.identity.study_uid for item in stored}) == 1:
        study_uid = study or stored[0].identity.study_uid
        body["00081190"] = _element("UR", f"{PREFIX}/studies/{study_uid}")
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [_reference(item) for item in stored]}
    status = 200 if not failed else (202 if stored else 409)
    response = jsonify(body)
    response.status_code = status
    response.mimetype = DICOM_JSON
    return response


@operation(
    dicomweb_bp, "/studies", method="POST", scope="write", tag="dicomweb",
    summary="STOW-RS: store DICOM instances (multipart/related; type=application/dicom)",
    media_type=DICOM_JSON, errors=(400, 409, 413, 415),
    description="Each instance is decoded under the upload limits, pseudonymised (no PHI value "
    "is kept) and queued for embedding; the answer lists each stored instance (its "
    "pseudonymous UIDs) and each refused one with a reason (ErrorComment).",
)  # fmt: skip
def store_instances() -> Response:
    return _store(None)


@operation(
    dicomweb_bp, "/studies/<study>", method="POST", scope="write", tag="dicomweb",
    summary="STOW-RS: store DICOM instances of one study (its pseudonymous UID)",
    media_type=DICOM_JSON, errors=(400, 409, 413, 415),
)  # fmt: skip
def store_study_instances(study: str) -> Response:
    return _store(study)


def multipart_related_parts() -> list[tuple[str, bytes]]:
    """(media type, bytes) of each part of a ``multipart/related`` body (RFC 2387)."""
    if request.mimetype != "multipart/related":
        raise ApiError(
            415,
            f'send the instances as multipart/related; type="application/dicom" (got '
            f"{request.content_type or 'no type'})",
        )
    params = request.mimetype_params
    declared = params.get("type", "application/dicom").lower()
    if declared != "application/dicom":
        raise ApiError(415, f'only type="application/dicom" is accepted (got {declared!r})')
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise ApiError(400, "the multipart/related content type has no usable boundary")
    body = request.get_data(cache=False)  # over api_max_upload_bytes: 413 from Flask, early
    delimiter = b"--" + boundary.encode("latin-1")
    if not body.startswith(delimiter):
        delimiter = b"\r\n" + delimiter
        if delimiter not in body:
            raise ApiError(400, "the body does not contain the multipart boundary")
    chunks = (b"\r\n" + body if body.startswith(b"--") else body).split(
        b"\r\n--" + boundary.encode("latin-1")
    )
    parts: list[tuple[str, bytes]] = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # the close delimiter
        head, separator, content = chunk.partition(b"\r\n\r\n")
        if not separator:
            raise ApiError(400, f"part {len(parts) + 1} of the multipart body has no header end")
        parts.append((_part_media_type(head), content))
        if len(parts) > MAX_STOW_INSTANCES:
            break
    else:
        raise ApiError(400, "the multipart body has no closing boundary (cut off?)")
    return parts


def _part_media_type(head: bytes) -> str:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-type":
            return value.decode("latin-1").split(";")[0].strip().lower()
    return ""


def _failure(code: int, reason: str, item: ReceivedInstance | None = None) -> dict[str, Any]:
    # ErrorComment holds 64 characters (LO); the whole reason goes in the private block too.
    failure: dict[str, Any] = {
        "00081197": _element("US", code),
        "00000902": _element("LO", reason[:64]),
        "00990010": _element("LO", PRIVATE_CREATOR),
        "00991010": _element("UT", reason),
    }
    if item is not None:
        failure.update(_sop_reference(item))
    return failure


def _sop_reference(item: ReceivedInstance) -> dict[str, Any]:
    reference = {"00081155": _element("UI", item.identity.sop_uid)}
    if item.sop_class_uid:
        reference["00081150"] = _element("UI", item.sop_class_uid)
    return reference


def _reference(item: ReceivedInstance) -> dict[str, Any]:
    identity = item.identity
    return {
        **_sop_reference(item),
        "00081190": _element(
            "UR", instance_url(identity.study_uid, identity.series_uid, identity.sop_uid)
        ),  # fmt: skip
    }


# --- QIDO-RS ----------------------------------------------------------------------------------
def _element(vr: str, *values: Any) -> dict[str, Any]:
    kept = [value for value in values if value is not None]
    return {"vr": vr, "Value": kept} if kept else {"vr": vr}


def instance_url(study: str | None, series: str | None, sop: str | None) -> str:
    return f"{PREFIX}/studies/{study}/series/{series}/instances/{sop}"


def qido_arguments(fixed: dict[str, str]) -> dict[str, Any]:
    """Cypher parameters of a QIDO-RS request: matching keys (by keyword or tag), paging."""
    by_tag = {tag: keyword for keyword, (tag, _) in MATCH_KEYS.items()}
    arguments: dict[str, Any] = {"study": None, "series": None, "sop": None, "modality": None}
    for name in request.args:
        if name in QIDO_CONTROLS:
            continue
        keyword = by_tag.get(name.upper(), name)
        if keyword not in MATCH_KEYS:
            raise ApiError(
                400,
                f"cannot match on {name!r}: the archive keeps no PHI and matches only "
                f"{', '.join(MATCH_KEYS)} (pseudonymous UIDs)",
            )
        value = request.args.get(name, "")
        if "*" in value or "?" in value or "\\" in value:
            raise ApiError(400, f"{keyword}: wildcard and list matching are not supported")
        arguments[MATCH_KEYS[keyword][1]] = value or None
    arguments.update(fixed)
    arguments["limit"] = _bounded("limit", QIDO_DEFAULT_LIMIT, 1, QIDO_MAX_LIMIT)
    arguments["offset"] = _bounded("offset", 0, 0, 10**9)
    return arguments


def _bounded(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low} and {high}, got {value}")
    return value


def _dicom_json(items: list[dict[str, Any]]) -> Response:
    response = jsonify(items)
    response.mimetype = DICOM_JSON
    return response


def _studies(context: ApiContext, fixed: dict[str, str]) -> Response:
    rows = context.store.query("dicomweb_studies", **qido_arguments(fixed))
    return _dicom_json([
        {
            "0020000D": _element("UI", row["study"]),
            "00080061": _element("CS", *row["modalities"]),
            "00201206": _element("IS", row["series"]),
            "00201208": _element("IS", row["instances"]),
            "00081190": _element("UR", f"{PREFIX}/studies/{row['study']}"),
        }
        for row in rows
    ])  # fmt: skip


def _series(context: ApiContext, fixed: dict[str, str]) -> Response:
    rows = context.store.query("dicomweb_series", **qido_arguments(fixed))
    return _dicom_json([
        {
            "0020000D": _element("UI", row["study"]),
            "0020000E": _element("UI", row["series"]),
            "00080060": _element("CS", row["modality"]),
            "00201209": _element("IS", row["instances"]),
            "00081190": _element("UR", f"{PREFIX}/studies/{row['study']}/series/{row['series']}"),
        }
        for row in rows
    ])  # fmt: skip


def _instances(context: ApiContext, fixed: dict[str, str]) -> Response:
    rows = context.store.query("dicomweb_instances", **qido_arguments(fixed))
    return _dicom_json([instance_json(row) for row in rows])


def instance_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "0020000D": _element("UI", row["study"]),
        "0020000E": _element("UI", row["series"]),
        "00080018": _element("UI", row["sop"]),
        "00080060": _element("CS", row["modality"]),
        "00280010": _element("US", row["rows"]),
        "00280011": _element("US", row["columns"]),
        "00081190": _element("UR", instance_url(row["study"], row["series"], row["sop"])),
    }


_QIDO = {"scope": "read", "tag": "dicomweb", "media_type": DICOM_JSON, "errors": (400,)}


@operation(dicomweb_bp, "/studies", summary="QIDO-RS: search for studies", **_QIDO)
def search_studies() -> Response:
    return _studies(api_context(), {})


@operation(dicomweb_bp, "/series", summary="QIDO-RS: search for series", **_QIDO)
def search_all_series() -> Response:
    return _series(api_context(), {})


@operation(dicomweb_bp, "/instances", summary="QIDO-RS: search for instances", **_QIDO)
def search_all_instances() -> Response:
    return _instances(api_context(), {})


@operation(
    dicomweb_bp, "/studies/<study>/series", summary="QIDO-RS: the series of a study", **_QIDO
)
def search_series(study: str) -> Response:
    return _series(api_context(), {"study": study})


@operation(
    dicomweb_bp, "/studies/<study>/instances", summary="QIDO-RS: the instances of a study",
    **_QIDO,
)  # fmt: skip
def search_study_instances(study: str) -> Response:
    return _instances(api_context(), {"study": study})


@operation(
    dicomweb_bp, "/studies/<study>/series/<series>/instances",
    summary="QIDO-RS: the instances of a series", **_QIDO,
)  # fmt: skip
def search_instances(study: str, series: str) -> Response:
    return _instances(api_context(), {"study": study, "series": series})


# --- WADO-RS rendered and similar-image search ------------------------------------------------
def stored_instance(context: ApiContext, study: str, series: str, sop: str) -> dict[str, Any]:
    rows = context.store.query(
        "dicomweb_instances", study=study, series=series, sop=sop, modality=None, limit=1,
        offset=0,
    )  # fmt: skip
    if not rows:
        raise ApiError(404, f"no stored instance {sop} in series {series} of study {study}")
    return dict(rows[0])


@operation(
    dicomweb_bp, "/studies/<study>/series/<series>/instances/<sop>/rendered", scope="read",
    tag="dicomweb", media_type="image/png", errors=(404, 406, 409, 422),
    summary="WADO-RS: the instance rendered as PNG or JPEG (Accept), from its pixels only",
)  # fmt: skip
def rendered_instance(study: str, series: str, sop: str) -> Response:
    context = api_context()
    row = stored_instance(context, study, series, sop)
    media_type = request.accept_mimetypes.best_match(["image/png", "image/jpeg"])
    if request.accept_mimetypes and media_type is None:
        raise ApiError(406, "rendered instances are served as image/png or image/jpeg")
    image_format = "JPEG" if media_type == "image/jpeg" else "PNG"
    data = rendered_png(context, row["key"], context.read_limits.output_side, image_format)
    return Response(data, mimetype=f"image/{image_format.lower()}")


class SimilarQuery(Model):
    k: int = Field(10, ge=1, description="Number of similar instances to return.")
    strategy: StrategyName = Field("region", description="As in `POST /api/v1/search`.")
    rerank: RerankName | None = Field(None, description="As in `POST /api/v1/search`.")
    exclude_same_patient: bool = Field(True, description="Leave out the query's patient.")
    finding: str | None = Field(None, max_length=64, description="Only images with it.")
    modality: str | None = Field(None, max_length=16, description="Only this modality.")


@operation(
    dicomweb_bp, "/studies/<study>/series/<series>/instances/<sop>/similar", scope="read",
    tag="dicomweb", query=SimilarQuery, media_type=DICOM_JSON, errors=(404, 409, 422),
    summary="The stored images most similar to a stored instance, as a DICOM JSON list",
    description="Each item names the instance by its (pseudonymous) UIDs and RetrieveURL when "
    "it is a DICOM instance, and carries medgraph's rank, cosine, image key and thumbnail in "
    f"the private block `{PRIVATE_CREATOR}` (group 0099).",
)  # fmt: skip
def similar_instances(study: str, series: str, sop: str, query: SimilarQuery) -> Response:
    started = time.perf_counter()
    context = api_context()
    max_k = context.settings.search_max_k
    if query.k > max_k:
        raise ApiError(422, f"k must be between 1 and {max_k}, got {query.k}")
    row = stored_instance(context, study, series, sop)
    values = query.model_dump(exclude_none=True)
    values.setdefault("rerank", context.settings.search_rerank)
    parameters = SearchParameters.model_validate({**values, "key": row["key"]})
    prepared = prepare_stored(context, parameters)
    hits = context.retrieval.search(
        prepared.embedding, parameters.k, parameters.strategy, prepared.filters,
        prepared.snapshot, prepared.findings,
    )  # fmt: skip
    identities = {
        record["key"]: record
        for record in context.store.query("dicomweb_by_keys", keys=list(hits.keys))
    }
    items = []
    for rank, (key, cosine) in enumerate(zip(hits.keys, hits.cosines, strict=True), 1):
        known = identities.get(key)
        item = instance_json(dict(known)) if known and known["sop"] else {}
        item.update({
            "00990010": _element("LO", PRIVATE_CREATOR),
            "00991001": _element("US", rank),
            "00991002": _element("FD", round(float(cosine), 6)),
            "00991003": _element("LO", key),
            "00991004": _element("UR", f"/api/v1/images/{key}/thumbnail"),
        })  # fmt: skip
        items.append(item)
    response = _dicom_json(items)
    response.headers["Server-Timing"] = f"total;dur={(time.perf_counter() - started) * 1e3:.1f}"
    return response
