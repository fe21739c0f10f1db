// One image for GET /api/v1/images/<key>: stored properties (never the patient key), weighted
// degree, number of SIMILAR relationships and how many images its patient has.
// Parameters: $key.
MATCH (i:Image {key: $key})
OPTIONAL MATCH (p:Patient)-[:HAS_IMAGE]->(i)
RETURN i.key AS key, i.findings AS findings, i.modality AS modality, i.width AS width,
       i.height AS height, i.file_bytes AS file_bytes,
       i.model_version AS model_version, toString(i.ingested_at) AS ingested_at,
       i.community AS community,
       COUNT { (i)-[:SIMILAR]-(:Image) } AS neighbours,
       reduce(total = 0.0, w IN COLLECT { MATCH (i)-[r:SIMILAR]-(:Image) RETURN r.weight } |
              total + w) AS degree,
       CASE WHEN p IS NULL THEN 1 ELSE COUNT { (p)-[:HAS_IMAGE]->(:Image) } END AS patient_images
