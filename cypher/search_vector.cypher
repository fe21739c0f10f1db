// Strategy `vector`: the Neo4j vector index alone (approximate, HNSW), filtered afterwards.
// The index score is (1 + cos) / 2; the cosine returned is recomputed from the embeddings.
// Parameters: $embedding, $fetch (index candidates), $k, filters as in search_region_seed.
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
  LIMIT $k
  RETURN collect({
    key: node.key,
    cosine: 2.0 * vector.similarity.cosine($embedding, node.embedding) - 1.0,
    community: node.community,
    findings: node.findings
  }) AS hits
}
RETURN images, hits
