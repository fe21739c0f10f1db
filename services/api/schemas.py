"""Request and response models of /api/v1; the OpenAPI document is generated from them."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from services.retrieval.contract import NO_FINDING

StrategyName = Literal["region", "community_ranked", "exact", "vector"]
RerankName = Literal["none", "findings"]


# Bounds of every integer the API takes: values go to Neo4j and Celery as 64-bit integers, and
# a larger one must be a 422, not an overflow deep in a driver.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_OFFSET = 1_000_000_000


class Model(BaseModel):
    # Infinity and NaN (which Python's JSON parser accepts) are refused in every float field.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """Pydantic's lax mode reads ``true`` as 1 in a number field (``k=true`` was k = 1)."""
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            kinds = set(get_args(annotation)) or {annotation}
            if bool not in kinds and kinds & {int, float}:
                raise ValueError("must be a number, not a boolean")
        return value


# --- errors ------------------------------------------------------------------------------------
class Problem(Model):
    field: str
    problem: str


class ErrorBody(Model):
    status: int
    message: str = Field(description="What went wrong, in words a client can show.")
    problems: list[Problem] | None = Field(None, description="Per-field validation problems.")
    model_config = ConfigDict(extra="allow")


class ErrorResponse(Model):
    error: ErrorBody


# --- search ------------------------------------------------------------------------------------
class SearchParameters(Model):
    """Sent as JSON, as form fields, or as form fields beside a multipart ``file``."""

    key: str | None = Field(
        None,
        description="Key of a stored image to use as the query (leave-one-out: it is never "
        "among its own results). Exactly one of `key` and an uploaded `file`.",
        max_length=128,
    )
    # The upper bound is the search_max_k setting, checked by the view with its own message.
    k: int = Field(50, description="Number of images to return.", ge=1)
    strategy: StrategyName = Field(
        "region",
        description="`region`: the paper's Algorithm 1 (region growing in the closest "
        "community); `community_ranked`: the communities as an inverted file (exact cosine "
        "over the members of the communities nearest the query, in Algorithm 1's order); `exact`: "
        "brute-force cosine over every stored image; `vector`: the Neo4j vector index alone.",
    )
    exclude_same_patient: bool = Field(
        True,
        description="Leave out images of the query's patient (known for stored images "
        "and for DICOM uploads with a PatientID).",
    )
    finding: str | None = Field(
        None,
        description=f"Only images with this positive finding; `{NO_FINDING}` = images without any.",
        max_length=64,
    )
    modality: str | None = Field(None, description="Only images of this modality.", max_length=16)
    # The default is the search_rerank setting, filled in by the view.
    rerank: RerankName = Field(
        "none",
        description="`findings`: re-rank the strategy's first 8 x k results by how likely each "
        "image's predicted findings agree with the query's (the encoder's calibrated "
        "probabilities, stored at ingestion), and return the best k; `none`: the strategy's own "
        "order. Not with `vector`. Default: the server's `search_rerank` setting.",
    )
    add: bool = Field(
        False,
        description="Keep the uploaded image in the graph (starts an ingest job); the query is "
        "never stored otherwise.",
    )


class SearchResult(Model):
    key: str
    rank: int = Field(description="1 = first; for `region`, the order Algorithm 1 added it.")
    cosine: float = Field(description="Cosine similarity of the image's code to the query's.")
    community: int | None
    findings: list[str] = Field(description="Positive findings; empty = No Finding.")
    finding_agreement: float | None = Field(
        None,
        description="With rerank=findings: log probability that the image's predicted findings "
        "all agree with the query's (the rank's score; null when the image has none stored).",
    )
    thumbnail_url: str


class SearchDiagnostics(Model):
    strategy: StrategyName
    k: int
    returned: int
    database_size: int = Field(description="Stored images.")
    images_examined: int = Field(
        description="Images whose similarity to the query was computed (for `vector`: the "
        "candidates the index returned)."
    )
    fraction_examined: float
    community: int | None = Field(description="The closest community (region only).")
    community_size: int | None
    communities_visited: list[int]
    rerank: RerankName = "none"
    rerank_candidates: int | None = Field(
        None, description="With rerank=findings: how many of the strategy's results it re-ranked."
    )
    stage_ms: dict[str, float] = Field(description="Milliseconds per stage, in order.")
    total_ms: float


class QueryDescription(Model):
    source: Literal["upload", "key"]
    key: str = Field(description="The stored key, or the SHA-256 of the uploaded bytes.")
    stored: bool | None = Field(
        description="Whether an image with this key is in the graph; null for uploads with a "
        "read key (whether a given file is archived is not told to read keys)."
    )
    modality: str | None
    patient_excluded: bool
    ingest_job_id: str | None = Field(None, description="Set when add=true started ingestion.")


class SearchResponse(Model):
    query: QueryDescription
    results: list[SearchResult]
    diagnostics: SearchDiagnostics


# --- images ------------------------------------------------------------------------------------
class ImageDetail(Model):
    key: str
    findings: list[str]
    modality: str | None
    width: int | None
    height: int | None
    file_bytes: int | None
    display_name: str = Field(
        description="A neutral name for the image: its key's prefix and format. File names "
        "carry identifiers (an NIH name is the patient number), so they are never returned."
    )
    model_version: str | None
    ingested_at: str | None
    community: int | None
    degree: float = Field(description="Weighted degree: sum of its SIMILAR weights.")
    neighbours: int = Field(description="Number of SIMILAR relationships.")
    patient_images: int = Field(
        description="Stored images of the same patient, this one included (the patient key "
        "itself is never returned)."
    )
    thumbnail_url: str
    file_url: str


class NeighbourhoodQuery(Model):
    hops: int = Field(1, ge=1, le=3, description="Path length from the image.")
    min_weight: float = Field(
        -1.0, ge=-1.0, le=1.0, description="Only SIMILAR relationships at least this heavy."
    )
    max_nodes: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Most nodes (strongest links first); default from settings.",
    )


class CytoscapeNodeData(Model):
    id: str
    community: int | None
    findings: list[str]
    hop: int
    thumbnail_url: str


class CytoscapeEdgeData(Model):
    id: str
    source: str
    target: str
    weight: float


class CytoscapeNode(Model):
    data: CytoscapeNodeData


class CytoscapeEdge(Model):
    data: CytoscapeEdgeData


class CytoscapeElements(Model):
    nodes: list[CytoscapeNode]
    edges: list[CytoscapeEdge]


class NeighbourhoodResponse(Model):
    center: str
    hops: int
    min_weight: float
    truncated: bool = Field(description="True when max_nodes cut the neighbourhood.")
    elements: CytoscapeElements = Field(description="Ready for cytoscape.js `elements`.")


# --- communities -------------------------------------------------------------------------------
class PageQuery(Model):
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)


class FindingCount(Model):
    finding: str
    images: int


class CommunitySummary(Model):
    id: int
    size: int | None
    sigma_tot: float | None = Field(description="Sum of the members' weighted degrees.")
    internal_weight: float | None = Field(description="Weight of the edges inside (each once).")
    findings: list[FindingCount] = Field(
        description="Member images per finding, most frequent first (`No Finding` included)."
    )
    run_id: str | None = Field(description="The clustering run that made it.")


class ClusteringRunSummary(Model):
    id: str
    total_weight_m: float | None = Field(description="m: sum of all SIMILAR weights.")
    properties: dict[str, Any] = Field(
        default_factory=dict, description="Every other stored property of the run."
    )


class CommunityList(Model):
    run: ClusteringRunSummary | None
    total: int
    limit: int
    offset: int
    communities: list[CommunitySummary]


class CommunityMember(Model):
    key: str
    findings: list[str]
    degree: float
    thumbnail_url: str


class CommunityMembersQuery(Model):
    members: int = Field(50, ge=0, le=1000, description="How many members to list.")


class CommunityDetail(Model):
    community: CommunitySummary
    members: list[CommunityMember] = Field(description="Members of largest weighted degree first.")


class CommunityLink(Model):
    source: int
    target: int
    weight: float = Field(description="Summed SIMILAR weight between the two communities.")
    pairs: int = Field(description="Number of SIMILAR pairs between them.")


class CommunityLinks(Model):
    links: list[CommunityLink] = Field(description="Strongest first.")


class CommunityLinksQuery(Model):
    limit: int = Field(50, ge=1, le=1000)


# --- jobs --------------------------------------------------------------------------------------
class IngestJobRequest(Model):
    paths: list[Annotated[str, Field(max_length=4096)]] = Field(
        min_length=1,
        max_length=1000,
        description="Files or folders to ingest; each must lie under a configured data root.",
    )
    labels: str | None = Field(
        None, max_length=4096, description="Optional label CSV (NIH or CheXpert format)."
    )


class ClusterJobRequest(Model):
    algorithm: Literal["leiden", "louvain", "cnm"] | None = Field(
        None, description="Default: the `cluster_algorithm` setting."
    )
    resolution: float | None = Field(None, gt=0, le=1000, description="Leiden/CNM resolution.")
    seed: int | None = Field(None, ge=0, le=INT64_MAX, description="Random seed.")
    if_stale: bool = Field(False, description="Only run when the clustering is stale.")


class JobStatus(Model):
    id: str
    kind: Literal["ingest", "cluster"]
    state: str
    detail: dict[str, Any] = Field(default_factory=dict)


# --- health ------------------------------------------------------------------------------------
class Health(Model):
    status: Literal["ok"]


class ComponentCheck(Model):
    ok: bool
    detail: str


class Readiness(Model):
    ready: bool
    checks: dict[str, ComponentCheck]
