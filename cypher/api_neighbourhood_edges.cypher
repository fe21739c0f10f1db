// The SIMILAR relationships of at least $min_weight among a set of images (each pair once).
// Parameters: $keys, $min_weight.
MATCH (a:Image)-[r:SIMILAR]->(b:Image)
WHERE a.key IN $keys AND b.key IN $keys AND r.weight >= $min_weight
RETURN a.key AS source, b.key AS target, r.weight AS weight
ORDER BY source, target
