// Images with an embedding, and how many of them already have their SIMILAR edges.
MATCH (image:Image)
WHERE image.embedding IS NOT NULL
RETURN count(image) AS images, count(image.knn_floor) AS linked
