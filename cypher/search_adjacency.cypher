// Every image's SIMILAR edges (neighbour key, weight), streamed into the read model's CSR
// adjacency; the weighted degree k_i is the sum of these weights.
MATCH (i:Image)
WHERE i.embedding IS NOT NULL
RETURN i.key AS key, [(i)-[r:SIMILAR]-(o:Image) | [o.key, r.weight]] AS edges
