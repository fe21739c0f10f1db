// Takes the write lock of the latest finished run, which serialises assignments at ingest
// (the lock is held until the transaction ends), then reads its figures: a value read after the
// lock is the committed one. Returns no row when no run has finished.
MATCH (r:ClusteringRun {status: 'finished'})
WITH r ORDER BY r.finished_at DESC LIMIT 1
SET r.assignment_lock = true
REMOVE r.assignment_lock
WITH r
RETURN r.id AS id, r.resolution AS resolution, r.total_weight_m AS total_weight_m,
       r.next_community_id AS next_community_id, coalesce(r.images_added, 0) AS images_added,
       coalesce(r.weight_added, 0.0) AS weight_added;
