// Every SIMILAR pair once (directed smaller key -> larger key) with its weight, one row each.
MATCH (a:Image)-[r:SIMILAR]->(b:Image)
RETURN a.key AS source, b.key AS target, r.weight AS weight
ORDER BY source, target;
