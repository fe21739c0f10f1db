// Keys and embeddings for the exact kNN: every image ($pending_only = false), or only those
// still waiting for their edges ($pending_only = true).
MATCH (image:Image)
WHERE image.embedding IS NOT NULL AND (NOT $pending_only OR image.knn_floor IS NULL)
RETURN image.key AS key, image.embedding AS embedding
