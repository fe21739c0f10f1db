// Projects every :Image and its SIMILAR relationships, undirected, weighted by cosine, into a
// GDS in-memory graph for Leiden/Louvain (a native projection: same graph as a Cypher
// projection of (a)-[r:SIMILAR]->(b), several times faster to build). Each node carries its
// current community as 'seed_community' (0, never a community id, for images without one) to
// start Leiden/Louvain from the previous partition. $read_concurrency is the number of loading
// threads (MEDGRAPH_CLUSTER_CONCURRENCY, 1 by default): with several, the node order can vary
// with thread timing.
// Parameters: $graph_name, $read_concurrency.
CALL gds.graph.project(
  $graph_name,
  {Image: {properties: {seed_community: {property: 'community', defaultValue: 0}}}},
  {SIMILAR: {type: 'SIMILAR', orientation: 'UNDIRECTED', properties: 'weight'}},
  {readConcurrency: $read_concurrency}
)
YIELD graphName, nodeCount, relationshipCount
RETURN graphName, nodeCount, relationshipCount / 2 AS pairCount;
