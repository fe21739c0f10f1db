// The label each image got from Leiden/Louvain in a projection, as two parallel lists (one
// record: far faster to read than a record per image). Parameters: $graph_name, $property.
CALL gds.graph.nodeProperty.stream($graph_name, $property)
YIELD nodeId, propertyValue
RETURN collect(gds.util.asNode(nodeId).key) AS keys, collect(propertyValue) AS labels;
