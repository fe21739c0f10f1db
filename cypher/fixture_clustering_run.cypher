// Writes a finished :ClusteringRun carrying the graph's total weight m, with the properties the
// clustering job (services/communities/job.py) reads back from its previous run.
// Parameters: $id, $total_weight_m, $communities, $modularity, $node_count, $edge_count,
// $next_community_id.
MERGE (r:ClusteringRun {id: $id})
SET r.total_weight_m = $total_weight_m,
    r.total_weight_m_at_run = $total_weight_m,
    r.community_count = $communities,
    r.modularity = $modularity,
    r.node_count = $node_count,
    r.edge_count = $edge_count,
    r.next_community_id = $next_community_id,
    r.images_added = 0,
    r.weight_added = 0.0,
    r.algorithm = 'fixture',
    r.status = 'finished',
    r.started_at = datetime(),
    r.finished_at = datetime()
