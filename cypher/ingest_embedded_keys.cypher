// Of $keys, those already stored with an embedding and predicted findings from $model_version
// (no need to embed again; an image stored before predicted findings were kept is embedded
// once more to get them).
UNWIND $keys AS key
MATCH (image:Image {key: key})
WHERE image.model_version = $model_version AND image.embedding IS NOT NULL
  AND image.finding_probabilities IS NOT NULL
RETURN image.key AS key
