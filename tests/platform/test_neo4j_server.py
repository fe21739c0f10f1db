"""The real Neo4j server answers with the plugins and indexes the platform relies on."""

from __future__ import annotations

import urllib.request

from services.config import Settings
from services.graph.store import GraphStore


def test_apoc_and_gds_are_loaded(graph_store: GraphStore) -> None:
    record = graph_store.query("health")[0]
    assert record["apoc"].startswith("5.26")
    assert record["gds"].startswith("2.13")


def test_weighted_leiden_and_louvain_find_two_triangles(clean_graph: GraphStore) -> None:
    clean_graph.run_text(
        """
        UNWIND [[1,2,1.0],[2,3,1.0],[3,1,1.0],[4,5,1.0],[5,6,1.0],[6,4,1.0],[1,4,0.05]] AS e
        MERGE (a:Probe {id: e[0]}) MERGE (b:Probe {id: e[1]})
        CREATE (a)-[:LINK {weight: e[2]}]->(b)
        """
    )
    clean_graph.run_text(
        """
        MATCH (s:Probe)-[r:LINK]->(t:Probe)
        WITH gds.graph.project('probe', s, t, {relationshipProperties: r {.weight}},
                               {undirectedRelationshipTypes: ['*']}) AS g
        RETURN g.graphName
        """
    )
    for algorithm, seed in (("leiden", ", randomSeed: 7"), ("louvain", "")):
        rows = clean_graph.run_text(
            f"CALL gds.{algorithm}.stream('probe', {{relationshipWeightProperty: 'weight', "
            f"concurrency: 1{seed}}}) YIELD nodeId, communityId "
            "RETURN gds.util.asNode(nodeId).id AS id, communityId ORDER BY id"
        )
        communities = [row["communityId"] for row in rows]
        assert len(communities) == 6
        assert communities[0] == communities[1] == communities[2], algorithm
        assert communities[3] == communities[4] == communities[5], algorithm
        assert communities[0] != communities[3], algorithm
    clean_graph.run_text("CALL gds.graph.drop('probe') YIELD graphName RETURN graphName")


def test_vector_index_answers_query_nodes(clean_graph: GraphStore) -> None:
    base = [0.0] * 1024
    first, second = list(base), list(base)
    first[0], second[1] = 1.0, 1.0
    clean_graph.run_text(
        "UNWIND $rows AS row CREATE (:Image {key: row.key, embedding: row.embedding})",
        rows=[{"key": "a", "embedding": first}, {"key": "b", "embedding": second}],
    )
    clean_graph.run_text("CALL db.awaitIndexes(120)")
    query = list(base)
    query[0], query[1] = 0.9, 0.1
    rows = clean_graph.run_text(
        "CALL db.index.vector.queryNodes('image_embedding', 2, $query) YIELD node, score "
        "RETURN node.key AS key, score",
        query=query,
    )
    assert [row["key"] for row in rows] == ["a", "b"]
    assert rows[0]["score"] > rows[1]["score"]


def test_schema_is_in_place(graph_store: GraphStore) -> None:
    names = {row["name"] for row in graph_store.query("schema_report")}
    assert {"image_key", "patient_key", "community_id", "image_embedding"} <= names
    states = {row["name"]: row["state"] for row in graph_store.query("schema_report")}
    assert states["image_embedding"] == "ONLINE"


def test_schema_apply_is_idempotent(graph_store: GraphStore) -> None:
    before = len(graph_store.query("schema_report"))
    graph_store.apply_schema()
    assert len(graph_store.query("schema_report")) == before


def test_browser_is_served(stack: Settings) -> None:
    url = f"http://{stack.neo4j_host}:{stack.neo4j_http_port}/browser/"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert b"Neo4j Browser" in response.read()


def test_authentication_is_on(stack: Settings) -> None:
    import pytest
    from neo4j import GraphDatabase
    from neo4j.exceptions import AuthError

    with (
        GraphDatabase.driver(stack.bolt_uri, auth=("neo4j", "wrong-password")) as driver,
        pytest.raises(AuthError),
    ):
        driver.verify_connectivity()
