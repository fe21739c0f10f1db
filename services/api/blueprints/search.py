"""POST /api/v1/search: the query is an uploaded image or a stored image's key."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from flask import Blueprint, request
from werkzeug.datastructures import FileStorage

from services.api.blueprints.jobs import keep_upload_and_ingest
from services.api.context import ApiContext, api_context
from services.api.errors import ApiError
from services.api.routing import may_write, operation, parse_json, require_scope
from services.api.schemas import (
    QueryDescription,
    SearchDiagnostics,
    SearchParameters,
    SearchResponse,
    SearchResult,
)
from services.encoder.imaging import ImageReadError, read_image
from services.ingest.pipeline import modality_of, patient_key
from services.retrieval.contract import SearchFilters, SearchHits, UnknownImage
from services.retrieval.readmodel import GraphSnapshot
from services.secrets import patient_key_secret

search_bp = Blueprint("search", __name__, url_prefix="/api/v1")
UPLOAD_FIELD = "file"
EMPTY_PIXELS = np.zeros((0, 0), dtype=np.float32)


def thumbnail_url(key: str) -> str:
    return f"/api/v1/images/{key}/thumbnail"


@dataclass
class PreparedQuery:
    embedding: np.ndarray
    description: QueryDescription
    filters: SearchFilters
    stage_ms: dict[str, float]
    snapshot: GraphSnapshot | None = None  # the read model version-checked for this request
    findings: np.ndarray | None = None  # the query's predicted findings, when re-ranking


@operation(
    search_bp,
    "/search",
    method="POST",
    scope="read",
    summary="Find the stored images most similar to a query image",
    tag="search",
    body=SearchParameters,
    upload_field=UPLOAD_FIELD,
    response=SearchResponse,
    errors=(400, 404, 409, 413, 415, 422),
    description="Send `multipart/form-data` with the image in the field `file` (PNG, JPEG or "
    "DICOM) and the parameters as form fields, or JSON / form fields with the `key` of a stored "
    "image. Needs the `write` scope when `add` is true.",
)
def search() -> SearchResponse:
    started = time.perf_counter()
    context = api_context()
    parameters, upload = read_search_request(context)
    if parameters.add:
        require_scope("write", "add=true stores the uploaded image")
    if upload is not None:
        prepared = prepare_upload(context, parameters, upload)
    else:
        prepared = prepare_stored(context, parameters)
    hits = context.retrieval.search(
        prepared.embedding,
        parameters.k,
        parameters.strategy,
        prepared.filters,
        prepared.snapshot,
        prepared.findings,
    )
    total_ms = (time.perf_counter() - started) * 1000.0
    return search_response(parameters, prepared, hits, total_ms)


def read_search_request(context: ApiContext) -> tuple[SearchParameters, FileStorage | None]:
    upload: FileStorage | None = None
    mimetype = request.mimetype
    if mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        values: Any = {name: request.form.get(name) for name in request.form}
        uploads = request.files.getlist(UPLOAD_FIELD)
        if len(uploads) > 1:
            raise ApiError(422, f"send one image file in '{UPLOAD_FIELD}', got {len(uploads)}")
        upload = uploads[0] if uploads else None
        unexpected = sorted(set(request.files) - {UPLOAD_FIELD})
        if unexpected:
            shown = ", ".join(name[:64] for name in unexpected[:5])
            more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
            raise ApiError(
                422,
                f"unexpected file field(s) {shown}{more}; send the image as '{UPLOAD_FIELD}'",
            )
    elif mimetype == "application/json" or request.is_json:
        values = parse_json()
        if not isinstance(values, dict):
            raise ApiError(400, "the body must be a JSON object of search parameters")
    elif not request.get_data(cache=True):
        raise no_query_error()
    else:
        raise ApiError(
            415,
            f"unsupported content type {mimetype!r}: upload the image as multipart/form-data "
            f"(field '{UPLOAD_FIELD}') or send JSON with the key of a stored image",
        )
    values = {name: value for name, value in values.items() if value not in (None, "")}
    values.setdefault("k", context.settings.default_k)
    values.setdefault("rerank", context.settings.search_rerank)
    parameters = SearchParameters.model_validate(values)
    if parameters.rerank == "findings" and parameters.strategy == "vector":
        raise ApiError(
            422,
            "rerank=findings works with the in-memory strategies (region, community_ranked, "
            "exact), not vector",
        )
    max_k = context.settings.search_max_k
    if parameters.k > max_k:
        raise ApiError(422, f"k must be between 1 and {max_k}, got {parameters.k}")
    if upload is not None and parameters.key is not None:
        raise ApiError(422, "send either an image file or a key, not both")
    if upload is None and parameters.key is None:
        raise no_query_error()
    if parameters.add and upload is None:
        raise ApiError(422, "add=true applies to uploaded images only (a key is already stored)")
    return parameters, upload


def no_query_error() -> ApiError:
    return ApiError(
        400,
        f"no query: upload an image file in the multipart field '{UPLOAD_FIELD}' or give the "
        "'key' of a stored image",
    )


def prepare_stored(context: ApiContext, parameters: SearchParameters) -> PreparedQuery:
    assert parameters.key is not None
    stage_ms: dict[str, float] = {}
    start = time.perf_counter()
    try:
        stored = context.retrieval.stored_query(parameters.key, parameters.strategy)
    except UnknownImage:
        raise ApiError(404, f"no stored image has the key {parameters.key!r}") from None
    stage_ms["load_query"] = (time.perf_counter() - start) * 1000.0
    exclude_patient = stored.patient_key if parameters.exclude_same_patient else None
    findings = None
    if parameters.rerank == "findings":
        findings = context.retrieval.stored_findings(stored)
    return PreparedQuery(
        embedding=stored.embedding,
        description=QueryDescription(
            source="key",
            key=stored.key,
            stored=True,
            modality=None,
            patient_excluded=exclude_patient is not None,
        ),
        filters=SearchFilters(
            exclude_keys=frozenset({stored.key}),
            exclude_patient_key=exclude_patient,
            finding=parameters.finding,
            modality=parameters.modality,
        ),
        stage_ms=stage_ms,
        snapshot=stored.snapshot,
        findings=findings,
    )


def prepare_upload(
    context: ApiContext, parameters: SearchParameters, upload: FileStorage
) -> PreparedQuery:
    settings = context.settings
    stage_ms: dict[str, float] = {}
    # The client's file name is never used: it may carry identifiers, and answers and logs
    # must not repeat them (issue 26).
    name = "the uploaded file"
    data = upload.read()
    if not data:
        raise ApiError(400, "the uploaded file is empty")
    start = time.perf_counter()
    # One slot per image from decoding until its pixels are dropped after embedding, so N
    # parallel uploads hold at most decode_slots images' worth of memory.
    with context.decode_gate.slot():
        stage_ms["wait"] = (time.perf_counter() - start) * 1000.0
        start = time.perf_counter()
        try:
            decoded = read_image(data, name=name, limits=context.read_limits)
        except ImageReadError as problem:
            raise ApiError(422, f"cannot read the uploaded image: {problem.reason}") from None
        stage_ms["decode"] = (time.perf_counter() - start) * 1000.0
        start = time.perf_counter()
        embedding, predicted = context.embed_with_findings(decoded.pixels)
        stage_ms["embed"] = (time.perf_counter() - start) * 1000.0
        decoded = replace(decoded, pixels=EMPTY_PIXELS)
    key = hashlib.sha256(data).hexdigest()
    stored = None
    # Only a write key may learn whether the uploaded file is stored: for a read key the answer
    # (stored, the stored image's patient left out) would tell whether a given image is in the
    # archive. The results cannot tell it either, as the query's own key is never among them.
    may_know = may_write()
    if may_know:
        start = time.perf_counter()
        try:
            stored = context.retrieval.stored_query(key, parameters.strategy)
        except UnknownImage:
            stored = None
        stage_ms["lookup"] = (time.perf_counter() - start) * 1000.0
    patient = None
    if decoded.patient_id:
        patient = patient_key(patient_key_secret(settings), decoded.patient_id)
    elif stored is not None:
        patient = stored.patient_key
    exclude_patient = patient if parameters.exclude_same_patient else None
    job_id = None
    if parameters.add:
        job_id = keep_upload_and_ingest(context, data, key, decoded.source_format)
    return PreparedQuery(
        embedding=embedding,
        description=QueryDescription(
            source="upload",
            key=key,
            stored=(stored is not None) if may_know else None,
            modality=modality_of(decoded),
            patient_excluded=exclude_patient is not None,
            ingest_job_id=job_id,
        ),
        # The query itself is never its own result, stored or not.
        filters=SearchFilters(
            exclude_keys=frozenset({key}),
            exclude_patient_key=exclude_patient,
            finding=parameters.finding,
            modality=parameters.modality,
        ),
        stage_ms=stage_ms,
        snapshot=None if stored is None else stored.snapshot,
        findings=predicted if parameters.rerank == "findings" else None,
    )


def search_response(
    parameters: SearchParameters, prepared: PreparedQuery, hits: SearchHits, total_ms: float
) -> SearchResponse:
    diagnostics = hits.diagnostics
    stage_ms = {**prepared.stage_ms, **{name: ms for name, ms in diagnostics.stage_ms.items()}}
    agreement: list[float | None] = [None] * len(hits.keys)
    if hits.agreement is not None:
        agreement = [float(a) if np.isfinite(a) else None for a in hits.agreement]
    return SearchResponse(
        query=prepared.description,
        results=[
            SearchResult(
                key=key,
                rank=rank,
                cosine=float(cosine),
                community=community,
                findings=list(findings),
                finding_agreement=score,
                thumbnail_url=thumbnail_url(key),
            )
            for rank, (key, cosine, community, findings, score) in enumerate(
                zip(
                    hits.keys, hits.cosines, hits.communities, hits.findings, agreement, strict=True
                ),
                1,
            )
        ],
        diagnostics=SearchDiagnostics(
            strategy=parameters.strategy,
            k=parameters.k,
            returned=len(hits.keys),
            database_size=diagnostics.database_size,
            images_examined=diagnostics.images_examined,
            fraction_examined=diagnostics.fraction_examined,
            community=diagnostics.community,
            community_size=diagnostics.community_size,
            communities_visited=diagnostics.communities_visited,
            rerank=parameters.rerank,
            rerank_candidates=diagnostics.rerank_candidates,
            stage_ms={name: round(ms, 3) for name, ms in stage_ms.items()},
            total_ms=round(total_ms, 3),
        ),
    )
