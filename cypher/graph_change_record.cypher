// `epoch`: a random id the singleton gets when it is created, so that a database wiped or
// restored (its generation starting again) is told apart from the one before.
// Records one change of what a search may see, in the transaction that made it: bumps the graph
// generation (the write lock on the singleton orders every recorded change) and logs a
// :GraphChange with that generation as its sequence number. The search side's read model
// applies the log in order (services/retrieval/changes.py); a generation that no entry explains
// is a change made outside the platform, which makes it rebuild.
// $kind: 'rows' (re-read these images: added, deleted, relabelled, edges or community changed),
// 'partition' (a new clustering run) or 'reload' (too big to apply: rebuild);
// $keys: image keys. The counts of images and SIMILAR pairs after the change let the read
// model tell a write outside the platform from a logged one. $keep: entries kept (older ones are trimmed, one or two per write).
MERGE (state:GraphState {id: 'graph'})
SET state.generation = coalesce(state.generation, 0) + 1,
    state.epoch = coalesce(state.epoch, randomUUID()),
    state.changed_at = datetime()
WITH state
CALL () {
  MATCH (i:Image)
  RETURN count(i) AS images
}
CALL () {
  MATCH ()-[r:SIMILAR]->()
  RETURN count(r) AS pairs
}
CREATE (change:GraphChange {seq: state.generation, kind: $kind, keys: $keys, at: datetime(),
                           images: images, pairs: pairs})
WITH state, change
CALL (state) {
  MATCH (old:GraphChange)
  WHERE old.seq <= state.generation - $keep
  DELETE old
}
RETURN change.seq AS seq, state.epoch AS epoch
