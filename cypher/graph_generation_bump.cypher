// Bumps the graph generation, a counter on the singleton (:GraphState {id: 'graph'}), and
// returns it. Every delete and relabel runs it first in its own transaction: the write lock it
// takes serialises them, and the new value changes the graph version that the in-process search
// caches are keyed by (search_graph_version.cypher), which a count of images and the latest
// ingested_at alone would not (a delete then an add, or a relabel).
MERGE (state:GraphState {id: 'graph'})
SET state.generation = coalesce(state.generation, 0) + 1,
    state.epoch = coalesce(state.epoch, randomUUID()),
    state.changed_at = datetime()
RETURN state.generation AS generation;
