// Incremental ingest: candidate linked neighbours of each new image ($keys).
// 1. its $candidates nearest from the vector index (score = (1 + cos) / 2 on a quantised copy);
// 2. the SIMILAR neighbours of its $expand nearest: a linked image can count the new one among
//    its k nearest while lying outside the new image's own candidate list (hub images), and such
//    images sit next to the new image's nearest neighbours.
// cosine is recomputed from the two stored embeddings; floor = the neighbour's k-th nearest
// neighbour cosine, so the new image is among its k nearest when cosine >= floor.
UNWIND $keys AS key
MATCH (image:Image {key: key})
CALL db.index.vector.queryNodes('image_embedding', $candidates, image.embedding)
YIELD node, score
WITH image, node, score
WHERE node <> image AND node.knn_floor IS NOT NULL
ORDER BY score DESC
WITH image, collect(node) AS nearest
CALL (image, nearest) {
  UNWIND nearest AS node
  RETURN node
  UNION
  UNWIND nearest[0..$expand] AS seed
  MATCH (seed)-[:SIMILAR]-(node:Image)
  WHERE node <> image AND node.knn_floor IS NOT NULL
  RETURN node
}
RETURN image.key AS key,
       node.key AS neighbour,
       2.0 * vector.similarity.cosine(image.embedding, node.embedding) - 1.0 AS cosine,
       node.knn_floor AS floor
