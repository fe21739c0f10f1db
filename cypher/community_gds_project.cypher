// Projects every :Image and its SIMILAR relationships, undirected, weighted by cosine, into a
// GDS in-memory graph for Leiden/Louvain (a native projection: same graph as a Cypher
// projection of (a)-[r:SIMILAR]->(b), several times faster to build). Each node carries its
// current community as 'seed_community' (0, never a community id, for images without one) to
// start Leiden/Louvain from the previous partition. $read_concurrency is the number of loading
// threads: with several, the projection's node order (which Leiden's result depends on) varies
// from run to run with thread timing, so 1 is what makes a run reproducible.
// Parameters: $graph_name, $read_concurrency.
CALL gds.graph.project(
  $graph_name,
  {Image: {properties: {seed_community: {property: 'community', defaultValue: 0}}}},
  {SIMILAR: {type: 'SIMILAR', orientation: 'UNDIRECTED', properties: 'weight'}},
  {readConcurrency: $read_concurrency}
)
YIELD graphName, nodeCount, relationshipCount
RETURN graphName, nodeCount, relationshipCount / 2 AS pairCount;
