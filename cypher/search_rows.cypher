// The current state of some images, for the read model to apply a logged change: what
// search_embeddings.cypher and search_adjacency.cypher read, for these keys only. Keys with no
// row were deleted. $keys.
UNWIND $keys AS key
MATCH (i:Image {key: key})
WHERE i.embedding IS NOT NULL
RETURN i.key AS key, i.embedding AS embedding, i.patient_key AS patient_key,
       i.findings AS findings, i.modality AS modality, i.community AS community,
       i.finding_probabilities AS finding_probabilities,
       [(i)-[r:SIMILAR]-(o:Image) | [o.key, r.weight]] AS edges
