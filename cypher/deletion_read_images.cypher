// What deleting images needs to know, read inside the deleting transaction: each stored image
// of $keys with its community, embedding, findings and source, and its SIMILAR neighbours with
// their community, weight, number of SIMILAR relationships and whether they are linked
// (knn_floor set). Keys that are not stored give no row.
UNWIND $keys AS key
MATCH (i:Image {key: key})
RETURN i.key AS key, i.community AS community, i.embedding AS embedding,
       i.findings AS findings, i.source AS source,
       i.knn_floor IS NOT NULL AS linked,
       COLLECT {
         MATCH (i)-[r:SIMILAR]-(j:Image)
         RETURN {key: j.key, community: j.community, weight: r.weight,
                 edges: COUNT { (j)-[:SIMILAR]-(:Image) }, linked: j.knn_floor IS NOT NULL}
       } AS edges;
