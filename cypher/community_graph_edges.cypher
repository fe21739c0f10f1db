// Every SIMILAR pair once, as three parallel lists, for clustering outside Neo4j (CNM).
MATCH (a:Image)-[r:SIMILAR]->(b:Image)
RETURN collect(a.key) AS sources, collect(b.key) AS targets, collect(r.weight) AS weights;
