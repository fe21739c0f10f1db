// How many stored embeddings each community holds (null = not assigned yet): the read model lays
// its matrix out community by community, so that each community is one contiguous block.
MATCH (i:Image)
WHERE i.embedding IS NOT NULL
RETURN i.community AS community, count(*) AS images
