// Generated SIMILAR edges for tests and benchmarks: one per pair, smaller key -> larger key.
// $rows: [{a, b, weight}] with a < b.
UNWIND $rows AS row
MATCH (a:Image {key: row.a})
MATCH (b:Image {key: row.b})
CREATE (a)-[:SIMILAR {weight: row.weight}]->(b);
