// A page of the communities, largest first, with the total count and the latest finished
// clustering run. Parameters: $skip, $limit.
CALL () {
  MATCH (c:Community)
  RETURN count(c) AS total
}
CALL () {
  MATCH (c:Community)
  WITH c ORDER BY c.size DESC, c.id SKIP $skip LIMIT $limit
  RETURN collect(c {.id, .size, .sigma_tot, .internal_weight, .finding_names, .finding_counts,
                    .run_id}) AS communities
}
CALL () {
  OPTIONAL MATCH (r:ClusteringRun {status: 'finished'})
  RETURN r {.*} AS run
  ORDER BY r.finished_at DESC
  LIMIT 1
}
RETURN total, communities, run
