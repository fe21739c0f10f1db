// Drops a projection if it exists. Parameters: $graph_name.
CALL gds.graph.drop($graph_name, false) YIELD graphName
RETURN graphName;
