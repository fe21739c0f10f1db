"""Image detail, thumbnail, file (served safely) and neighbourhood; communities."""

from __future__ import annotations

import io
import json
from pathlib import Path

import networkx as nx
import pytest
from flask.testing import FlaskClient
from PIL import Image

from services.graph.store import GraphStore
from tests.api.conftest import ApiGraph

pytestmark = pytest.mark.neo4j


def test_image_detail_never_shows_patient_identifiers(
    client: FlaskClient, api_graph: ApiGraph
) -> None:
    key = api_graph.keys[4]
    response = client.get(f"/api/v1/images/{key}")
    assert response.status_code == 200
    body = response.get_json()
    degree = sum(w for (a, b), w in api_graph.edges.items() if key in (a, b))
    neighbours = sum(1 for pair in api_graph.edges if key in pair)
    same_patient = sum(p == api_graph.patient_of[key] for p in api_graph.patient_of.values())
    assert body["key"] == key
    assert body["findings"] == list(api_graph.findings[key])
    assert body["community"] == api_graph.community_of[key]
    assert body["degree"] == pytest.approx(degree, rel=1e-6)
    assert body["neighbours"] == neighbours
    assert body["patient_images"] == same_patient
    # A neutral name: the NIH file name is the patient number (issue 26).
    assert body["display_name"] == f"{key[:12]}.png"
    assert api_graph.path_of[key].stem not in json.dumps(body)
    assert body["modality"] == "PNG"
    text = json.dumps(body)
    assert api_graph.patient_of[key] not in text
    assert "patient_key" not in text
    assert str(api_graph.path_of[key].parent) not in text  # no server folders either


def test_thumbnail_is_a_png_rendered_from_the_pixels(
    client: FlaskClient, api_graph: ApiGraph
) -> None:
    key = api_graph.keys[2]
    response = client.get(f"/api/v1/images/{key}/thumbnail")
    assert response.status_code == 200
    assert response.mimetype == "image/png"
    thumbnail = Image.open(io.BytesIO(response.data))
    original = Image.open(api_graph.path_of[key])
    assert thumbnail.format == "PNG" and thumbnail.mode == "L"
    assert max(thumbnail.size) <= 128
    assert thumbnail.size == original.size  # 64 px sources are not enlarged


def test_file_is_served_byte_for_byte(client: FlaskClient, api_graph: ApiGraph) -> None:
    key = api_graph.keys[3]
    response = client.get(f"/api/v1/images/{key}/file")
    assert response.status_code == 200
    assert response.data == api_graph.path_of[key].read_bytes()
    assert response.mimetype == "image/png"
    assert "attachment" in response.headers["Content-Disposition"]


def _point_source(store: GraphStore, key: str, source: str) -> None:
    store.run_text("MATCH (i:Image {key: $key}) SET i.source = $source", key=key, source=source)


def test_files_outside_the_data_roots_are_never_served(
    client: FlaskClient, api_graph: ApiGraph, graph_store: GraphStore, tmp_path: Path
) -> None:
    key = api_graph.keys[9]
    original = api_graph.path_of[key]
    outside = tmp_path / "outside.png"  # tmp_path is not under the data root
    outside.write_bytes(original.read_bytes())
    link = api_graph.root / "link-outside.png"
    link.symlink_to(outside)
    sneaky = f"{api_graph.root}/nih/../../{tmp_path.name}/outside.png"
    try:
        for source in (
            str(outside),
            str(link),
            sneaky,
            "/etc/passwd",
            "s3://bucket/x.png",
            "x.png",
        ):
            _point_source(graph_store, key, source)
            for route in ("file", "thumbnail"):
                response = client.get(f"/api/v1/images/{key}/{route}")
                assert response.status_code == 404, (source, route)
                assert "not available" in response.get_json()["error"]["message"]
    finally:
        _point_source(graph_store, key, str(original))
        link.unlink()


def test_a_changed_file_is_refused(
    client: FlaskClient, api_graph: ApiGraph, graph_store: GraphStore
) -> None:
    key = api_graph.keys[10]
    other = api_graph.path_of[api_graph.keys[11]]
    _point_source(graph_store, key, str(other))  # a file whose content is not this key
    try:
        response = client.get(f"/api/v1/images/{key}/file")
        assert response.status_code == 409
        assert "changed" in response.get_json()["error"]["message"]
    finally:
        _point_source(graph_store, key, str(api_graph.path_of[key]))


def test_unknown_image(client: FlaskClient) -> None:
    for route in ("", "/thumbnail", "/file", "/neighbourhood"):
        response = client.get(f"/api/v1/images/{'f' * 64}{route}")
        assert response.status_code == 404
        assert "no stored image" in response.get_json()["error"]["message"]


@pytest.mark.parametrize(("hops", "min_weight"), [(1, -1.0), (2, 0.0), (2, 0.95), (3, 0.9)])
def test_neighbourhood_matches_networkx(
    client: FlaskClient, api_graph: ApiGraph, hops: int, min_weight: float
) -> None:
    key = api_graph.keys[1]
    response = client.get(
        f"/api/v1/images/{key}/neighbourhood", query_string={"hops": hops, "min_weight": min_weight}
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    strong = nx.Graph()
    strong.add_node(key)
    strong.add_edges_from(pair for pair, w in api_graph.edges.items() if w >= min_weight)
    expected = nx.ego_graph(strong, key, radius=hops)
    hop_of = nx.single_source_shortest_path_length(expected, key)
    nodes = {node["data"]["id"]: node["data"] for node in body["elements"]["nodes"]}
    assert set(nodes) == set(expected.nodes)
    assert {n: d["hop"] for n, d in nodes.items()} == hop_of
    edges = {(e["data"]["source"], e["data"]["target"]) for e in body["elements"]["edges"]}
    assert edges == {tuple(sorted(edge)) for edge in expected.edges}
    assert body["truncated"] is False
    for data in nodes.values():
        assert data["community"] == api_graph.community_of[data["id"]]


def test_neighbourhood_limits(client: FlaskClient, api_graph: ApiGraph) -> None:
    key = api_graph.keys[1]
    response = client.get(
        f"/api/v1/images/{key}/neighbourhood", query_string={"hops": 3, "max_nodes": 5}
    )
    body = response.get_json()
    assert len(body["elements"]["nodes"]) == 5 and body["truncated"] is True
    for bad in ({"hops": 0}, {"hops": 4}, {"min_weight": 2}, {"hops": "x"}, {"depth": 1}):
        response = client.get(f"/api/v1/images/{key}/neighbourhood", query_string=bad)
        assert response.status_code == 422, bad
        assert response.get_json()["error"]["message"]


def test_communities_list_and_detail(client: FlaskClient, api_graph: ApiGraph) -> None:
    response = client.get("/api/v1/communities")
    assert response.status_code == 200
    body = response.get_json()
    sizes = {
        c: list(api_graph.community_of.values()).count(c)
        for c in set(api_graph.community_of.values())
    }
    assert body["total"] == len(sizes)
    assert {c["id"]: c["size"] for c in body["communities"]} == sizes
    assert [c["size"] for c in body["communities"]] == sorted(sizes.values(), reverse=True)
    m = sum(api_graph.edges.values())
    assert body["run"]["total_weight_m"] == pytest.approx(m)
    degree = {key: 0.0 for key in api_graph.keys}
    for (a, b), w in api_graph.edges.items():
        degree[a] += w
        degree[b] += w
    largest = body["communities"][0]
    members = {k for k, c in api_graph.community_of.items() if c == largest["id"]}
    assert largest["sigma_tot"] == pytest.approx(sum(degree[k] for k in members))
    page = client.get("/api/v1/communities", query_string={"limit": 1, "offset": 1}).get_json()
    assert [c["id"] for c in page["communities"]] == [body["communities"][1]["id"]]

    detail = client.get(
        f"/api/v1/communities/{largest['id']}", query_string={"members": 3}
    ).get_json()
    assert detail["community"]["id"] == largest["id"]
    strongest = sorted(members, key=lambda k: (-degree[k], k))[:3]
    assert [m["key"] for m in detail["members"]] == strongest
    assert client.get("/api/v1/communities/987654").status_code == 404
    assert client.get("/api/v1/communities", query_string={"limit": 0}).status_code == 422
