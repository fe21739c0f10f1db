// The graph generation alone (the sequence number of the latest logged change), read before
// search_graph_version.cypher: Neo4j may evaluate that query's subqueries in any order, so its
// own generation can be newer than its counts, latest ingestion or run. A generation read in an
// earlier query is never newer than any of them (services/retrieval/cache.py).
OPTIONAL MATCH (state:GraphState {id: 'graph'})
RETURN coalesce(state.generation, 0) AS generation
