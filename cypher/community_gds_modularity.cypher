// Modularity (resolution 1) of a partition held in a node property of a projection, by GDS.
// Parameters: $graph_name, $property.
CALL gds.modularity.stream($graph_name, {
  communityProperty: $property,
  relationshipWeightProperty: 'weight'
})
YIELD modularity
RETURN sum(modularity) AS modularity;
