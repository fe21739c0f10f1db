// Removes images with their relationships, then every :Patient left without an image (so a
// deleted patient leaves not even its HMAC key behind). The second collect waits for every
// image of the batch to be gone before any patient is checked. Parameters: $keys.
UNWIND $keys AS key
MATCH (i:Image {key: key})
OPTIONAL MATCH (p:Patient)-[:HAS_IMAGE]->(i)
WITH i, collect(p) AS patients
DETACH DELETE i
WITH collect(patients) AS groups
UNWIND groups AS patients
UNWIND patients AS p
WITH DISTINCT p
WHERE NOT EXISTS { (p)-[:HAS_IMAGE]->() }
DELETE p;
