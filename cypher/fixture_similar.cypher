// Writes prepared SIMILAR relationships, one per pair, from the smaller key to the larger.
// Parameters: $rows [{a, b, weight}] with a < b.
UNWIND $rows AS row
MATCH (a:Image {key: row.a})
MATCH (b:Image {key: row.b})
MERGE (a)-[r:SIMILAR]->(b)
SET r.weight = row.weight
