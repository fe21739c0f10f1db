// What identifies the stored graph for the in-process caches of the search side (the `exact`
// matrix and any read model): the number of images, the latest ingestion time (index-backed,
// so both are cheap), the latest finished clustering run, and the graph generation that every
// delete and relabel bumps (graph_generation_bump.cypher) - a delete then an add, or a relabel,
// leaves the first three as they were.
CALL () {
  MATCH (i:Image)
  RETURN count(i) AS images
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
CALL () {
  OPTIONAL MATCH (state:GraphState {id: 'graph'})
  RETURN coalesce(state.generation, 0) AS generation
}
RETURN images, toString(latest) AS latest, run, generation
