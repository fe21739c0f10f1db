// notebooks/explore.ipynb: precision@K of the kNN graph per community. For each labelled image,
// its K strongest SIMILAR neighbours (labelled ones); precision = the share of them that share
// at least one finding with it ('No Finding' counts as a finding). Averaged per community.
// $k: neighbours per image.
MATCH (i:Image)
WHERE i.findings IS NOT NULL AND i.community IS NOT NULL
CALL (i) {
  MATCH (i)-[s:SIMILAR]-(n:Image)
  WHERE n.findings IS NOT NULL
  WITH n, s ORDER BY s.weight DESC, n.key LIMIT $k
  WITH CASE WHEN size(i.findings) = 0 THEN ['No Finding'] ELSE i.findings END AS mine,
       CASE WHEN size(n.findings) = 0 THEN ['No Finding'] ELSE n.findings END AS theirs
  RETURN avg(CASE WHEN any(f IN theirs WHERE f IN mine) THEN 1.0 ELSE 0.0 END) AS precision,
         count(*) AS neighbours
}
WITH i.community AS community, avg(precision) AS precision_at_k, count(i) AS images,
     avg(neighbours) AS neighbours
RETURN community, images, precision_at_k, neighbours
ORDER BY community
