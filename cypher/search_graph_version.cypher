// What identifies the stored graph for the in-process read model (the `exact` matrix and the
// region strategies' adjacency and communities): the number of images, the latest ingestion time
// (index-backed, so both are cheap) and the latest finished clustering run.
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
RETURN images, toString(latest) AS latest, run
