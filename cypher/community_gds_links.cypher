// The community graph of a partition held in a node property of a projection: one row per
// pair of communities a <= b joined by SIMILAR, with the summed weight between them (a = b:
// the community's internal weight). The projection is undirected, so GDS streams each pair in
// both directions: across communities, keeping a < b counts each pair once; inside one, both
// directions pass and the sum is halved. Returned as parallel lists (one record).
// Parameters: $graph_name, $property.
CALL gds.graph.relationshipProperty.stream($graph_name, 'weight')
YIELD sourceNodeId, targetNodeId, propertyValue
WITH gds.util.nodeProperty($graph_name, sourceNodeId, $property) AS a,
     gds.util.nodeProperty($graph_name, targetNodeId, $property) AS b,
     propertyValue AS weight
WHERE a <= b
WITH a, b, sum(weight) AS summed
RETURN collect(a) AS sources, collect(b) AS targets,
       collect(CASE WHEN a = b THEN summed / 2 ELSE summed END) AS weights;
