// After incremental edges: each image's knn_floor = its k-th largest SIMILAR weight. An image's
// edges include its k nearest neighbours, so that is its k-th nearest neighbour's cosine
// (-1 when it has fewer than $k edges, e.g. where min_cosine cut them).
UNWIND $keys AS key
MATCH (image:Image {key: key})
WITH image, COLLECT {
  MATCH (image)-[edge:SIMILAR]-()
  RETURN edge.weight AS weight ORDER BY weight DESC
} AS weights
SET image.knn_floor = CASE WHEN size(weights) >= $k THEN weights[$k - 1] ELSE -1.0 END
