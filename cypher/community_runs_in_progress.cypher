// Clustering runs not finished (status 'running').
MATCH (r:ClusteringRun {status: 'running'})
RETURN r.id AS id, r.started_at AS started_at;
