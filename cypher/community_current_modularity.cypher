// Modularity of the stored partition now (after any assignments at ingest), from the stored
// sums: Q = sum_c [internal_c / m - (sigma_tot_c / 2m)^2], m of the latest finished run.
MATCH (r:ClusteringRun {status: 'finished'})
WITH r ORDER BY r.finished_at DESC LIMIT 1
MATCH (c:Community)
WITH r.total_weight_m AS m, c
RETURN CASE WHEN m > 0
         THEN sum(c.internal_weight / m - (c.sigma_tot / (2.0 * m)) ^ 2)
       END AS modularity, m;
