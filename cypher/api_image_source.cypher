// Where an image's file was ingested from (for thumbnails and the file download).
// Parameters: $key.
MATCH (i:Image {key: $key})
RETURN i.source AS source
