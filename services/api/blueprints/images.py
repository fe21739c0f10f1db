"""Image detail, thumbnail, original file and k-hop neighbourhood."""

from __future__ import annotations

from flask import Blueprint, Response

from services.api.blueprints.search import thumbnail_url
from services.api.context import ApiContext, api_context
from services.api.errors import ApiError
from services.api.files import (
    MEDIA_TYPES,
    ThumbnailCache,
    media_type_of,
    read_verified,
    servable_path,
    thumbnail_png,
)
from services.api.routing import binary_response, operation
from services.api.schemas import (
    CytoscapeEdge,
    CytoscapeEdgeData,
    CytoscapeElements,
    CytoscapeNode,
    CytoscapeNodeData,
    ImageDetail,
    NeighbourhoodQuery,
    NeighbourhoodResponse,
)
from services.encoder.imaging import ImageReadError, read_image
from services.privacy import deidentified_dicom, display_name, open_source
from services.secrets import patient_key_secret

images_bp = Blueprint("images", __name__, url_prefix="/api/v1")
thumbnails = ThumbnailCache()
# A key names immutable content, so clients may keep images as long as they like.
IMMUTABLE = "private, max-age=86400, immutable"


def _missing(key: str) -> ApiError:
    return ApiError(404, f"no stored image has the key {key!r}")


@operation(
    images_bp,
    "/images/<key>",
    scope="read",
    summary="One stored image: findings, modality, size, community, degree",
    tag="images",
    response=ImageDetail,
    errors=(404,),
)
def image_detail(key: str) -> ImageDetail:
    records = api_context().store.query("api_image_detail", key=key)
    if not records:
        raise _missing(key)
    row = records[0]
    return ImageDetail(
        key=row["key"],
        findings=list(row["findings"] or []),
        modality=row["modality"],
        width=row["width"],
        height=row["height"],
        file_bytes=row["file_bytes"],
        display_name=display_name(row["key"], row["modality"]),
        model_version=row["model_version"],
        ingested_at=row["ingested_at"],
        community=row["community"],
        degree=float(row["degree"] or 0.0),
        neighbours=int(row["neighbours"]),
        patient_images=int(row["patient_images"]),
        thumbnail_url=thumbnail_url(key),
        file_url=f"/api/v1/images/{key}/file",
    )


def _stored_file(context: ApiContext, key: str) -> tuple[str, bytes]:
    """The image's neutral display name and its file's bytes."""
    records = context.store.query("api_image_source", key=key)
    if not records:
        raise _missing(key)
    source = open_source(patient_key_secret(context.settings), records[0]["source"])
    path = servable_path(source, list(context.settings.data_roots))
    if path is None:
        raise ApiError(404, f"the file of image {key} is not available from this server")
    data = read_verified(path, key, context.settings.max_file_bytes)
    return display_name(key, records[0]["modality"]), data


def rendered_png(context: ApiContext, key: str, size: int, image_format: str = "PNG") -> bytes:
    """The stored image rendered from its pixels, its longest side at most ``size``."""
    name, data = _stored_file(context, key)
    with context.decode_gate.slot():
        try:
            decoded = read_image(data, name=name, limits=context.read_limits)
        except ImageReadError as problem:
            raise ApiError(422, f"the stored file cannot be rendered: {problem.reason}") from None
        rendered = thumbnail_png(decoded.pixels, size, image_format)
        del decoded
    return rendered


@operation(
    images_bp,
    "/images/<key>/thumbnail",
    scope="read",
    summary="A PNG thumbnail rendered from the image's pixels",
    tag="images",
    media_type="image/png",
    errors=(404, 409, 422),
)
def image_thumbnail(key: str) -> Response:
    context = api_context()
    size = context.settings.api_thumbnail_pixels
    cached = thumbnails.get(key, size)
    if cached is not None and not context.store.query("api_image_source", key=key):
        # Deleted, perhaps by another process (the CLI): never serve what is gone.
        thumbnails.discard(key)
        raise _missing(key)
    if cached is None:
        cached = rendered_png(context, key, size)
        thumbnails.put(key, size, cached)
    return binary_response(cached, "image/png", **{"Cache-Control": IMMUTABLE, "ETag": key})


@operation(
    images_bp,
    "/images/<key>/file",
    scope="read",
    summary="The original file as ingested (PNG, JPEG; DICOM as a de-identified copy)",
    tag="images",
    media_type="application/octet-stream",
    errors=(404, 409),
)
def image_file(key: str) -> Response:
    name, data = _stored_file(api_context(), key)
    media_type = media_type_of(data)
    etag = key
    if media_type == MEDIA_TYPES["dicom"]:
        # A DICOM header carries the patient's identifiers: only a de-identified copy leaves.
        data, etag = deidentified_dicom(data, key), f"{key}-deidentified"
    return binary_response(
        data,
        media_type,
        **{
            "Cache-Control": IMMUTABLE,
            "ETag": etag,
            "Content-Disposition": f'attachment; filename="{_safe_name(name)}"',
        },
    )


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "image"


@operation(
    images_bp,
    "/images/<key>/neighbourhood",
    scope="read",
    summary="The images within `hops` SIMILAR steps, as cytoscape.js elements",
    tag="images",
    query=NeighbourhoodQuery,
    response=NeighbourhoodResponse,
    errors=(404, 422),
    description="Breadth-first over SIMILAR relationships of at least `min_weight`; each hop "
    "keeps the strongest links first until `max_nodes` nodes are collected.",
)
def image_neighbourhood(key: str, query: NeighbourhoodQuery) -> NeighbourhoodResponse:
    context = api_context()
    store = context.store
    limit_cap = context.settings.api_neighbourhood_max_nodes
    max_nodes = min(query.max_nodes or limit_cap, limit_cap)
    if not store.query("search_details", keys=[key]):
        raise _missing(key)
    hop_of: dict[str, int] = {key: 0}
    frontier = [key]
    truncated = False
    for hop in range(1, query.hops + 1):
        room = max_nodes - len(hop_of)
        if not frontier:
            break
        if room <= 0:
            truncated = True  # hops remain but the node budget is spent
            break
        rows = store.query(
            "api_neighbourhood_hop",
            frontier=frontier,
            seen=list(hop_of),
            min_weight=query.min_weight,
            limit=room + 1,
        )
        if len(rows) > room:
            truncated = True
            rows = rows[:room]
        frontier = [row["key"] for row in rows]
        for other in frontier:
            hop_of[other] = hop
    keys = list(hop_of)
    details = {row["key"]: row for row in store.query("search_details", keys=keys)}
    edges = store.query("api_neighbourhood_edges", keys=keys, min_weight=query.min_weight)
    return NeighbourhoodResponse(
        center=key,
        hops=query.hops,
        min_weight=query.min_weight,
        truncated=truncated,
        elements=CytoscapeElements(
            nodes=[
                CytoscapeNode(
                    data=CytoscapeNodeData(
                        id=node,
                        community=details[node]["community"] if node in details else None,
                        findings=list(details[node]["findings"] or []) if node in details else [],
                        hop=hop_of[node],
                        thumbnail_url=thumbnail_url(node),
                    )
                )
                for node in keys
            ],
            edges=[
                CytoscapeEdge(
                    data=CytoscapeEdgeData(
                        id=f"{edge['source']}~{edge['target']}",
                        source=edge["source"],
                        target=edge["target"],
                        weight=float(edge["weight"]),
                    )
                )
                for edge in edges
            ],
        ),
    )
