// The latest finished clustering run, every property (parameters is a JSON string).
// total_weight_m, images_added and weight_added are kept current by assignments at ingest;
// *_at_run properties are the figures the run itself measured.
MATCH (r:ClusteringRun {status: 'finished'})
RETURN r {.*} AS run
ORDER BY r.finished_at DESC
LIMIT 1;
