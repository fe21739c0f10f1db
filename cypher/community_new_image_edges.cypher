// What assigning new images needs: each one's community (if any yet), embedding, findings and
// its SIMILAR neighbours with their community and the weight. Parameters: $keys.
UNWIND $keys AS key
MATCH (i:Image {key: key})
OPTIONAL MATCH (i)-[r:SIMILAR]-(j:Image)
WITH i, collect(CASE WHEN j IS NULL THEN null
                     ELSE {key: j.key, community: j.community, weight: r.weight} END) AS edges
RETURN i.key AS key, i.community AS community, i.embedding AS embedding,
       coalesce(i.findings, []) AS findings, edges;
