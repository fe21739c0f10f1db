// Algorithm 1's stored sums for the read model: every community's sigma_tot and size, and the
// total weight m of the latest finished clustering run (kept current by ingest-time assignment).
CALL () {
  MATCH (c:Community)
  WHERE c.sigma_tot IS NOT NULL
  RETURN collect([c.id, c.sigma_tot, c.size]) AS communities
}
CALL () {
  OPTIONAL MATCH (r:ClusteringRun {status: 'finished'})
  WHERE r.total_weight_m IS NOT NULL
  RETURN r.id AS run, r.total_weight_m AS m
  ORDER BY r.finished_at DESC
  LIMIT 1
}
RETURN communities, run, m
