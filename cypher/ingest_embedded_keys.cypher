// Of $keys, those already stored with an embedding from $model_version (no need to embed again).
UNWIND $keys AS key
MATCH (image:Image {key: key})
WHERE image.model_version = $model_version AND image.embedding IS NOT NULL
RETURN image.key AS key
