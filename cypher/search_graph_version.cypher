// What identifies the stored set of embeddings for the in-process matrix cache of `exact`:
// the number of images and the latest ingestion time (index-backed, so both are cheap).
CALL () {
  MATCH (i:Image)
  RETURN count(i) AS images
}
CALL () {
  OPTIONAL MATCH (i:Image)
  WHERE i.ingested_at IS NOT NULL
  RETURN i.ingested_at AS latest
  ORDER BY i.ingested_at DESC
  LIMIT 1
}
RETURN images, toString(latest) AS latest
