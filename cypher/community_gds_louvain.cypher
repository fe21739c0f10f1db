// Weighted Louvain on a projected graph (GDS Louvain has no resolution and no seed: it is
// deterministic at concurrency 1). Labels land in the node property $property.
// $seed_property: 'seed_community' to start from the previous partition, or null.
// Parameters: $graph_name, $property, $seed_property, $concurrency, $max_levels.
CALL gds.louvain.mutate($graph_name, {
  mutateProperty: $property,
  relationshipWeightProperty: 'weight',
  seedProperty: $seed_property,
  concurrency: $concurrency,
  maxLevels: $max_levels
})
YIELD communityCount, modularity, ranLevels
RETURN communityCount, modularity, ranLevels, true AS didConverge;
