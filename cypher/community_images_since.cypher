// Keys of the images first written at or after a time. Parameters: $since (datetime).
MATCH (i:Image)
WHERE i.ingested_at >= $since
RETURN collect(i.key) AS keys;
