// Images that have no community yet (ingested since the last clustering run), oldest first.
MATCH (i:Image)
WHERE i.community IS NULL
RETURN i.key AS key
ORDER BY i.ingested_at, i.key
