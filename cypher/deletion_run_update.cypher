// A deletion's change to the latest clustering run: m by the weight of the removed and added
// SIMILAR pairs counted in the sums, and the count of deleted images since the run.
// Parameters: $id, $delta_m, $images.
MATCH (r:ClusteringRun {id: $id})
SET r.total_weight_m = coalesce(r.total_weight_m, 0.0) + $delta_m,
    r.images_deleted = coalesce(r.images_deleted, 0) + $images,
    r.last_deletion_at = datetime();
