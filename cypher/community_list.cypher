// Every community of the latest clustering, largest first, without the 1024-d centroid.
// finding_names[i] has finding_counts[i] member images ('No Finding' = no positive finding).
MATCH (c:Community)
RETURN c.id AS id, c.size AS size, c.sigma_tot AS sigma_tot,
       c.internal_weight AS internal_weight,
       c.finding_names AS finding_names, c.finding_counts AS finding_counts,
       c.run_id AS run_id, c.updated_at AS updated_at
ORDER BY size DESC, id;
