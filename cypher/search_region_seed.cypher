// Algorithm 1, step 2 (the query joins the graph) and the inputs of step 5 (closest community).
// One round trip: the query's nearest eligible images through the vector index (with their
// embeddings: the caller recomputes exact cosines, keeps the nearest as the query's edges and
// uses the cosines as edge weights), every community's stored sums, and the total weight m of
// the latest clustering run.
// Parameters: $embedding (1024 floats), $fetch (index candidates), $keep (rows returned),
// filters $exclude_keys, $exclude_patient_key, $finding, $no_finding, $modality.
CALL () {
  MATCH (i:Image)
  RETURN count(i) AS images
}
CALL () {
  CALL db.index.vector.queryNodes('image_embedding', $fetch, $embedding) YIELD node, score
  WITH node, score
  WHERE NOT node.key IN $exclude_keys
    AND ($exclude_patient_key IS NULL OR node.patient_key IS NULL
         OR node.patient_key <> $exclude_patient_key)
    AND ($modality IS NULL OR node.modality = $modality)
    AND ($finding IS NULL OR $finding IN node.findings)
    AND (NOT $no_finding OR size(node.findings) = 0)
  WITH node, score
  ORDER BY score DESC, node.key
  LIMIT $keep
  RETURN collect({key: node.key, embedding: node.embedding, community: node.community})
         AS neighbours
}
CALL () {
  MATCH (c:Community)
  WHERE c.sigma_tot IS NOT NULL
  RETURN collect([c.id, c.sigma_tot, c.size]) AS communities
}
CALL () {
  OPTIONAL MATCH (r:ClusteringRun {status: 'finished'})
  WHERE r.total_weight_m IS NOT NULL
  RETURN r.id AS run, r.total_weight_m AS m
  ORDER BY r.finished_at DESC
  LIMIT 1
}
RETURN images, neighbours, communities, run, m
