// One breadth-first hop of a neighbourhood: images linked to the frontier by SIMILAR
// relationships of at least $min_weight, not seen yet, strongest first.
// Parameters: $frontier (keys), $seen (keys), $min_weight, $limit.
UNWIND $frontier AS key
MATCH (:Image {key: key})-[r:SIMILAR]-(other:Image)
WHERE r.weight >= $min_weight AND NOT other.key IN $seen
WITH other, max(r.weight) AS strongest
RETURN other.key AS key, strongest
ORDER BY strongest DESC, key
LIMIT $limit
