// One community's stored sums and a page of its members, largest weighted degree first.
// Parameters: $id, $members.
MATCH (c:Community {id: $id})
CALL (c) {
  MATCH (i:Image {community: c.id})
  WITH i, reduce(total = 0.0, w IN COLLECT { MATCH (i)-[r:SIMILAR]-(:Image) RETURN r.weight } |
                 total + w) AS degree
  ORDER BY degree DESC, i.key
  LIMIT $members
  RETURN collect({key: i.key, findings: i.findings, degree: degree}) AS members
}
RETURN c {.id, .size, .sigma_tot, .internal_weight, .finding_names, .finding_counts, .run_id}
       AS community, members
