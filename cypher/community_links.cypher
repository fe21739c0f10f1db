// The SIMILAR weight between communities, strongest first: source < target, their summed
// weight and number of pairs. $community = null for all links, or one id for that community's
// links. Parameters: $community, $limit.
MATCH (a:Image)-[r:SIMILAR]->(b:Image)
WHERE a.community IS NOT NULL AND b.community IS NOT NULL AND a.community <> b.community
  AND ($community IS NULL OR a.community = $community OR b.community = $community)
WITH CASE WHEN a.community < b.community THEN a.community ELSE b.community END AS source,
     CASE WHEN a.community < b.community THEN b.community ELSE a.community END AS target,
     r.weight AS weight
RETURN source, target, sum(weight) AS weight, count(*) AS pairs
ORDER BY weight DESC, source, target
LIMIT $limit;
