// Writes prepared :Image nodes (and their :Patient) as cypher/README.md models them; used by
// services/retrieval/fixtures.py for tests and benchmarks that build a graph without ingestion.
// Parameters: $rows [{key, source, findings, patient_key, modality, width, height, file_bytes,
// embedding, model_version, community, finding_probabilities}].
UNWIND $rows AS row
MERGE (i:Image {key: row.key})
SET i.source = row.source,
    i.findings = row.findings,
    i.patient_key = row.patient_key,
    i.modality = row.modality,
    i.width = row.width,
    i.height = row.height,
    i.file_bytes = row.file_bytes,
    i.model_version = row.model_version,
    i.community = row.community,
    i.finding_probabilities = row.finding_probabilities,
    i.ingested_at = coalesce(i.ingested_at, datetime())
WITH i, row
// Stored as a float32 array, as ingestion stores it.
CALL db.create.setNodeVectorProperty(i, 'embedding', row.embedding)
WITH i, row
WHERE row.patient_key IS NOT NULL
MERGE (p:Patient {key: row.patient_key})
MERGE (p)-[:HAS_IMAGE]->(i)
