// One :Image per distinct file content (key = SHA-256 of the bytes), with its patient link.
// Idempotent: writing the same rows again changes no counts.
// $rows: [{key, source, name_key, findings, patient_key, modality, width, height, file_bytes,
//          model_version, embedding, finding_probabilities,
//          dicom_study_uid, dicom_series_uid, dicom_sop_uid}]
//   source: the file's path, sealed (services/privacy.py); name_key: the HMAC of its base
//   name when the operator keeps them (keep_original_name_keys), else null (a stored one stays).
//   findings / patient_key null = not known from this ingest (stored values are kept);
//   modality, width, height, embedding, finding_probabilities null = the file's content is
//   already stored. finding_probabilities: the encoder's calibrated predicted findings, in its
//   checkpoint's finding order, computed with the embedding (so they share model_version).
//   dicom_*_uid: the pseudonymous DICOM UIDs (services/privacy.py) that DICOMweb lists; null
//   for PNG/JPEG and for reused rows (stored values are kept).
// A new model_version clears knn_floor, so the image's neighbours are computed again.
// Every batch is logged as one change of the search side's read model, in this transaction
// (graph_change_record.cypher: the generation's write lock is taken first, in the order deletes
// and relabels take it, and orders the log). $keep: log entries kept.
MERGE (state:GraphState {id: 'graph'})
SET state.generation = coalesce(state.generation, 0) + 1,
    state.epoch = coalesce(state.epoch, randomUUID()),
    state.changed_at = datetime()
WITH state
UNWIND $rows AS row
OPTIONAL MATCH (stored:Image {key: row.key})
WITH state, row, stored IS NOT NULL AS existed
MERGE (image:Image {key: row.key})
  ON CREATE SET image.ingested_at = datetime()
WITH state, image, row, existed,
     row.embedding IS NOT NULL
       AND (image.model_version IS NULL OR image.model_version <> row.model_version
            OR image.embedding IS NULL) AS new_embedding,
     row.embedding IS NOT NULL AND row.finding_probabilities IS NOT NULL
       AND image.finding_probabilities IS NULL AS new_probabilities
SET image.source = row.source,
    image.name_key = coalesce(row.name_key, image.name_key),
    image.findings = coalesce(row.findings, image.findings),
    image.patient_key = coalesce(row.patient_key, image.patient_key),
    image.modality = coalesce(row.modality, image.modality),
    image.width = coalesce(row.width, image.width),
    image.height = coalesce(row.height, image.height),
    image.file_bytes = row.file_bytes,
    image.dicom_study_uid = coalesce(row.dicom_study_uid, image.dicom_study_uid),
    image.dicom_series_uid = coalesce(row.dicom_series_uid, image.dicom_series_uid),
    image.dicom_sop_uid = coalesce(row.dicom_sop_uid, image.dicom_sop_uid),
    image.model_version = CASE WHEN new_embedding THEN row.model_version
                               ELSE image.model_version END,
    image.finding_probabilities = CASE WHEN row.embedding IS NOT NULL
                                       THEN row.finding_probabilities
                                       ELSE image.finding_probabilities END,
    image.knn_floor = CASE WHEN new_embedding THEN null ELSE image.knn_floor END
WITH state, image, row, new_embedding
CALL (image, row, new_embedding) {
  WITH image, row WHERE new_embedding
  // Stored as a float32 array: half the size of a Cypher float list, as the vector index wants.
  CALL db.create.setNodeVectorProperty(image, 'embedding', row.embedding)
}
CALL (image, row) {
  WITH image, row WHERE row.patient_key IS NOT NULL
  MERGE (patient:Patient {key: row.patient_key})
  MERGE (patient)-[:HAS_IMAGE]->(image)
  WITH image, row
  MATCH (other:Patient)-[stale:HAS_IMAGE]->(image)
  WHERE other.key <> row.patient_key
  DELETE stale
}
WITH state, count(*) AS written
CALL () {
  MATCH (i:Image)
  RETURN count(i) AS images
}
CALL () {
  MATCH ()-[r:SIMILAR]->()
  RETURN count(r) AS pairs
}
CREATE (:GraphChange {seq: state.generation, kind: 'rows', keys: [row IN $rows | row.key],
                      at: datetime(), images: images, pairs: pairs})
WITH state
CALL (state) {
  MATCH (old:GraphChange)
  WHERE old.seq <= state.generation - $keep
  DELETE old
}
