"""Communities of the latest clustering: a paged list and one community's detail."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from services.api.blueprints.search import thumbnail_url
from services.api.context import api_context
from services.api.errors import ApiError
from services.api.routing import operation
from services.api.schemas import (
    INT64_MAX,
    INT64_MIN,
    ClusteringRunSummary,
    CommunityDetail,
    CommunityLink,
    CommunityLinks,
    CommunityLinksQuery,
    CommunityList,
    CommunityMember,
    CommunityMembersQuery,
    CommunitySummary,
    FindingCount,
    PageQuery,
)

communities_bp = Blueprint("communities", __name__, url_prefix="/api/v1")


def community_summary(row: dict[str, Any]) -> CommunitySummary:
    names = row.get("finding_names") or []
    counts = row.get("finding_counts") or []
    return CommunitySummary(
        id=int(row["id"]),
        size=row.get("size"),
        sigma_tot=row.get("sigma_tot"),
        internal_weight=row.get("internal_weight"),
        findings=[
            FindingCount(finding=name, images=int(count))
            for name, count in zip(names, counts, strict=False)
        ],
        run_id=None if row.get("run_id") is None else str(row["run_id"]),
    )


def _plain(value: Any) -> Any:
    """Neo4j temporal values become ISO text; lists are kept; numbers and text pass."""
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    iso = getattr(value, "iso_format", None)
    return iso() if callable(iso) else str(value)


def _check_id(community_id: int) -> None:
    """Community ids are 64-bit in the graph; a larger number names no community."""
    if not INT64_MIN <= community_id <= INT64_MAX:
        raise ApiError(404, f"no community has the id {community_id}")


@operation(
    communities_bp,
    "/communities",
    scope="read",
    summary="The communities of the latest clustering, largest first",
    tag="communities",
    query=PageQuery,
    response=CommunityList,
)
def list_communities(query: PageQuery) -> CommunityList:
    record = api_context().store.query("api_communities", skip=query.offset, limit=query.limit)[0]
    run = record["run"]
    return CommunityList(
        run=None
        if run is None
        else ClusteringRunSummary(
            id=str(run["id"]),
            total_weight_m=run.get("total_weight_m"),
            properties={
                name: _plain(value)
                for name, value in sorted(run.items())
                if name not in ("id", "total_weight_m")
            },
        ),
        total=int(record["total"]),
        limit=query.limit,
        offset=query.offset,
        communities=[community_summary(row) for row in record["communities"]],
    )


@operation(
    communities_bp,
    "/communities/<int(signed=True):community_id>",
    scope="read",
    summary="One community: its stored sums, finding counts and strongest members",
    tag="communities",
    query=CommunityMembersQuery,
    response=CommunityDetail,
    errors=(404,),
)
def community_detail(community_id: int, query: CommunityMembersQuery) -> CommunityDetail:
    _check_id(community_id)
    records = api_context().store.query(
        "api_community_detail", id=community_id, members=query.members
    )
    if not records:
        raise ApiError(404, f"no community has the id {community_id}")
    record = records[0]
    return CommunityDetail(
        community=community_summary(record["community"]),
        members=[
            CommunityMember(
                key=member["key"],
                findings=list(member["findings"] or []),
                degree=float(member["degree"]),
                thumbnail_url=thumbnail_url(member["key"]),
            )
            for member in record["members"]
        ],
    )


@operation(
    communities_bp,
    "/communities/<int(signed=True):community_id>/links",
    scope="read",
    summary="The SIMILAR weight between one community and each other community",
    tag="communities",
    query=CommunityLinksQuery,
    response=CommunityLinks,
    errors=(404,),
)
def community_links(community_id: int, query: CommunityLinksQuery) -> CommunityLinks:
    _check_id(community_id)
    store = api_context().store
    if not store.query("api_community_detail", id=community_id, members=0):
        raise ApiError(404, f"no community has the id {community_id}")
    rows = store.query("community_links", community=community_id, limit=query.limit)
    return CommunityLinks(
        links=[
            CommunityLink(source=int(row["source"]), target=int(row["target"]),
                          weight=float(row["weight"]), pairs=int(row["pairs"]))
            for row in rows
        ]
    )  # fmt: skip
