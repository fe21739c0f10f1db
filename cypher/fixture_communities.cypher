// Writes prepared :Community nodes with their stored sums and finding histogram.
// Parameters: $rows [{id, size, sigma_tot, internal_weight, finding_names, finding_counts,
// centroid, mean_norm}], $run.
UNWIND $rows AS row
MERGE (c:Community {id: row.id})
SET c.size = row.size,
    c.sigma_tot = row.sigma_tot,
    c.internal_weight = row.internal_weight,
    c.finding_names = row.finding_names,
    c.finding_counts = row.finding_counts,
    c.centroid = row.centroid,
    c.mean_norm = row.mean_norm,
    c.run_id = $run,
    c.created_by = 'fixture',
    c.updated_at = datetime()
