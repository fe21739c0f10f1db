// Opens a clustering run. Parameters: $id, $properties.
CREATE (r:ClusteringRun {id: $id})
SET r += $properties
RETURN r.id AS id;
