// The :IngestJob summary node of one job ($id).
MATCH (job:IngestJob {id: $id})
RETURN job
