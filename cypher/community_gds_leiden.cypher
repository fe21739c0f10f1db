// Weighted Leiden on a projected graph; labels land in the projection's node property
// $property (read them with community_gds_labels). $seed_property: 'seed_community' to start
// from the previous partition, or null to start from singletons.
// Parameters: $graph_name, $property, $resolution, $seed, $seed_property, $concurrency,
// $max_levels.
CALL gds.leiden.mutate($graph_name, {
  mutateProperty: $property,
  relationshipWeightProperty: 'weight',
  gamma: $resolution,
  randomSeed: $seed,
  seedProperty: $seed_property,
  concurrency: $concurrency,
  maxLevels: $max_levels
})
YIELD communityCount, modularity, ranLevels, didConverge
RETURN communityCount, modularity, ranLevels, didConverge;
