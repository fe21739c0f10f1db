// Updates a clustering run. Parameters: $id, $properties.
MATCH (r:ClusteringRun {id: $id})
SET r += $properties;
