// A relabel: the image's findings and its community's finding histogram (two parallel lists),
// nothing else. Parameters: $key, $findings, $community (null = none), $names, $counts.
MATCH (i:Image {key: $key})
SET i.findings = $findings
WITH i
OPTIONAL MATCH (c:Community {id: $community})
FOREACH (_ IN CASE WHEN c IS NULL THEN [] ELSE [1] END |
  SET c.finding_names = $names, c.finding_counts = $counts, c.updated_at = datetime());
