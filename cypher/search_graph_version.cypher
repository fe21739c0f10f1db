// The cheap check of the stored graph behind the search side's read models: the graph
// generation (= the sequence number of the latest logged change, graph_change_record.cypher),
// the number of images and of SIMILAR pairs (count store), the latest ingestion time (index) and
// the latest finished clustering run. The reads are not one snapshot (read committed), and the
// planner may run the subqueries in any order: the caller takes the generation from
// search_graph_generation.cypher, read before this query, so that the counts, ingestion time
// and run are never older than the generation it uses (they may be newer: a logged change that
// commits in between, which the read model must not take for a write outside the platform;
// services/retrieval/cache.py reads the version again first).
CALL () {
  OPTIONAL MATCH (state:GraphState {id: 'graph'})
  RETURN coalesce(state.generation, 0) AS generation, state.epoch AS epoch
}
CALL () {
  MATCH (i:Image)
  RETURN count(i) AS images
}
CALL () {
  MATCH ()-[r:SIMILAR]->()
  RETURN count(r) AS pairs
}
CALL () {
  OPTIONAL MATCH (i:Image)
  WHERE i.ingested_at IS NOT NULL
  RETURN i.ingested_at AS latest
  ORDER BY i.ingested_at DESC
  LIMIT 1
}
CALL () {
  OPTIONAL MATCH (r:ClusteringRun {status: 'finished'})
  RETURN r.id AS run
  ORDER BY r.finished_at DESC
  LIMIT 1
}
RETURN generation, images, pairs, toString(latest) AS latest, run, epoch
