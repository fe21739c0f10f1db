// ingest_write_edges.cypher for incremental ingest, logged as one change of the search side's
// read model in the same transaction (graph_change_record.cypher; the generation's lock first,
// as deletes and relabels take it). $rows: [{a, b, weight}] with a < b; $keep.
MERGE (state:GraphState {id: 'graph'})
SET state.generation = coalesce(state.generation, 0) + 1,
    state.epoch = coalesce(state.epoch, randomUUID()),
    state.changed_at = datetime()
WITH state
UNWIND $rows AS row
MATCH (a:Image {key: row.a})
MATCH (b:Image {key: row.b})
MERGE (a)-[edge:SIMILAR]->(b)
SET edge.weight = row.weight
WITH state, count(*) AS written
CALL () {
  MATCH (i:Image)
  RETURN count(i) AS images
}
CALL () {
  MATCH ()-[r:SIMILAR]->()
  RETURN count(r) AS pairs
}
CREATE (:GraphChange {seq: state.generation, kind: 'rows', keys: [row IN $rows | row.a] + [row IN $rows | row.b],
                      at: datetime(), images: images, pairs: pairs})
WITH state
CALL (state) {
  MATCH (old:GraphChange)
  WHERE old.seq <= state.generation - $keep
  DELETE old
}
