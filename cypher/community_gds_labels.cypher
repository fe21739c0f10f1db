// The label each image got from Leiden/Louvain in a projection, as two parallel lists (one
// record: far faster to read than a record per image). Parameters: $graph_name, $property.
// An image deleted since the projection (a curator's delete while the job runs) has no node
// any more: it is left out, so that both lists stay parallel.
CALL gds.graph.nodeProperty.stream($graph_name, $property)
YIELD nodeId, propertyValue
WITH gds.util.asNode(nodeId) AS image, propertyValue
WHERE image IS NOT NULL AND image.key IS NOT NULL
RETURN collect(image.key) AS keys, collect(propertyValue) AS labels;
