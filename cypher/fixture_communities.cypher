// Writes prepared :Community nodes with their stored sums.
// Parameters: $rows [{id, size, sigma_tot, internal_weight}], $run.
UNWIND $rows AS row
MERGE (c:Community {id: row.id})
SET c.size = row.size,
    c.sigma_tot = row.sigma_tot,
    c.internal_weight = row.internal_weight,
    c.run_id = $run
