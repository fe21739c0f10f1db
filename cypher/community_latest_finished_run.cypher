// The id, image count and freshness counters of the latest finished run (no row when none).
MATCH (r:ClusteringRun {status: 'finished'})
WITH r ORDER BY r.finished_at DESC LIMIT 1
RETURN r.id AS id, r.node_count AS node_count, coalesce(r.images_added, 0) AS images_added,
       coalesce(r.weight_added, 0.0) AS weight_added, r.total_weight_m AS total_weight_m,
       r.next_community_id AS next_community_id, r.finished_at AS finished_at;
