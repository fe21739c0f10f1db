// The community of every image that has one, as two parallel lists (one record: far faster
// to read than a record per image).
MATCH (i:Image)
WHERE i.community IS NOT NULL
RETURN collect(i.key) AS keys, collect(i.community) AS communities;
