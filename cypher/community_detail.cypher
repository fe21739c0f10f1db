// One community, every stored property (centroid included), with the share of its sigma_tot
// that stays inside (2 * internal_weight / sigma_tot). Parameters: $id.
MATCH (c:Community {id: $id})
RETURN c {.*} AS community,
       CASE WHEN c.sigma_tot > 0 THEN 2.0 * c.internal_weight / c.sigma_tot END AS cohesion;
