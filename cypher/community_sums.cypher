// The stored sums of some communities. Parameters: $ids.
UNWIND $ids AS id
MATCH (c:Community {id: id})
RETURN c.id AS id, c.size AS size, c.sigma_tot AS sigma_tot,
       c.internal_weight AS internal_weight, c.centroid AS centroid, c.mean_norm AS mean_norm,
       c.finding_names AS finding_names, c.finding_counts AS finding_counts;
