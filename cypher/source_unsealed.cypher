// Images whose source path is still stored in clear (ingested before paths were sealed), a
// batch at a time, for the migration that seals them (services/ingest/sealing.py).
// Parameters: $prefix (the sealed form's prefix), $limit.
MATCH (i:Image)
WHERE i.source IS NOT NULL AND NOT i.source STARTS WITH $prefix
RETURN i.key AS key, i.source AS source
LIMIT $limit
