// The :IngestJob summary node (progress itself lives in Redis while the job runs).
// $props: a map of plain values (status, total, done, failed, edge_mode, ...).
MERGE (job:IngestJob {id: $id})
  ON CREATE SET job.created_at = datetime()
SET job += $props, job.updated_at = datetime()
