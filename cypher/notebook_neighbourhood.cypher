// notebooks/explore.ipynb: one image's SIMILAR neighbours, strongest first.
// $key: the image; $limit: at most this many neighbours.
MATCH (i:Image {key: $key})-[s:SIMILAR]-(n:Image)
RETURN n.key AS neighbour, s.weight AS weight, n.community AS community,
       coalesce(n.findings, []) AS findings
ORDER BY weight DESC, neighbour
LIMIT $limit
