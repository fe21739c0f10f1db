// Marks images as linked: knn_floor = cosine of the image's k-th nearest neighbour (-1 when it
// has fewer than k). Images without knn_floor still wait for their SIMILAR edges.
// $rows: [{key, floor}]
UNWIND $rows AS row
MATCH (image:Image {key: row.key})
SET image.knn_floor = row.floor
