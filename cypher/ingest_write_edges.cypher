// SIMILAR edges of the kNN graph, one per unordered pair, directed smaller key -> larger key.
// $rows: [{a, b, weight}] with a < b; weight = cosine of the two embeddings. Idempotent.
UNWIND $rows AS row
MATCH (a:Image {key: row.a})
MATCH (b:Image {key: row.b})
MERGE (a)-[edge:SIMILAR]->(b)
SET edge.weight = row.weight
