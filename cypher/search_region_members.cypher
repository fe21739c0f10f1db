// Algorithm 1, steps 6-8: the eligible members of one community with what region growing
// needs, in one round trip: the cosine to the query, and every SIMILAR edge (neighbour key,
// weight, neighbour community), from which the caller takes the weighted degree k_j and the
// weights between j and the region.
// Parameters: $community, $embedding, filters as in search_region_seed.
MATCH (m:Image {community: $community})
WHERE NOT m.key IN $exclude_keys
  AND ($exclude_patient_key IS NULL OR m.patient_key IS NULL
       OR m.patient_key <> $exclude_patient_key)
  AND ($modality IS NULL OR m.modality = $modality)
  AND ($finding IS NULL OR $finding IN m.findings)
  AND (NOT $no_finding OR size(m.findings) = 0)
RETURN m.key AS key,
       m.findings AS findings,
       2.0 * vector.similarity.cosine($embedding, m.embedding) - 1.0 AS cosine,
       [(m)-[r:SIMILAR]-(o:Image) | [o.key, r.weight, o.community]] AS edges
