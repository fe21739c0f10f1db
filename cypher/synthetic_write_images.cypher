// Generated :Image nodes for tests and benchmarks (bench/similarity_graph.py), stored as
// ingestion stores them (embedding as a float32 vector property). Not used by the services.
// $rows: [{key, source, findings, patient_key, embedding}]
UNWIND $rows AS row
CREATE (image:Image {key: row.key, source: row.source, findings: row.findings,
                     patient_key: row.patient_key, modality: 'synthetic',
                     ingested_at: datetime()})
WITH image, row
CALL db.create.setNodeVectorProperty(image, 'embedding', row.embedding);
