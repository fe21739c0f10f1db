// Applied at every start-up by `medgraph schema` and the services; every statement is idempotent.
CREATE CONSTRAINT image_key IF NOT EXISTS FOR (i:Image) REQUIRE i.key IS UNIQUE;
CREATE CONSTRAINT patient_key IF NOT EXISTS FOR (p:Patient) REQUIRE p.key IS UNIQUE;
CREATE CONSTRAINT community_id IF NOT EXISTS FOR (c:Community) REQUIRE c.id IS UNIQUE;
CREATE CONSTRAINT clustering_run_id IF NOT EXISTS FOR (r:ClusteringRun) REQUIRE r.id IS UNIQUE;
CREATE CONSTRAINT ingest_job_id IF NOT EXISTS FOR (j:IngestJob) REQUIRE j.id IS UNIQUE;
CREATE INDEX image_community IF NOT EXISTS FOR (i:Image) ON (i.community);
CREATE INDEX image_ingested_at IF NOT EXISTS FOR (i:Image) ON (i.ingested_at);
CREATE VECTOR INDEX image_embedding IF NOT EXISTS
FOR (i:Image) ON i.embedding
OPTIONS {indexConfig: {`vector.dimensions`: 1024, `vector.similarity_function`: 'cosine'}};
CREATE CONSTRAINT api_key_id IF NOT EXISTS FOR (k:ApiKey) REQUIRE k.id IS UNIQUE;
CREATE CONSTRAINT graph_state_id IF NOT EXISTS FOR (s:GraphState) REQUIRE s.id IS UNIQUE;
CREATE CONSTRAINT audit_record_id IF NOT EXISTS FOR (a:AuditRecord) REQUIRE a.id IS UNIQUE;
CREATE INDEX audit_record_at IF NOT EXISTS FOR (a:AuditRecord) ON (a.at);
CREATE CONSTRAINT file_deletion_key IF NOT EXISTS FOR (f:FileDeletion) REQUIRE f.key IS UNIQUE;
CREATE INDEX image_patient_key IF NOT EXISTS FOR (i:Image) ON (i.patient_key);
CREATE INDEX image_dicom_sop_uid IF NOT EXISTS FOR (i:Image) ON (i.dicom_sop_uid);
CREATE INDEX image_dicom_study_uid IF NOT EXISTS FOR (i:Image) ON (i.dicom_study_uid);
CREATE CONSTRAINT graph_change_seq IF NOT EXISTS FOR (c:GraphChange) REQUIRE c.seq IS UNIQUE;
