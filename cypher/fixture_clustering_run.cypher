// Writes a finished :ClusteringRun carrying the graph's total weight m.
// Parameters: $id, $total_weight_m, $communities, $modularity.
MERGE (r:ClusteringRun {id: $id})
SET r.total_weight_m = $total_weight_m,
    r.communities = $communities,
    r.modularity = $modularity,
    r.status = 'finished',
    r.started_at = datetime(),
    r.finished_at = datetime()
