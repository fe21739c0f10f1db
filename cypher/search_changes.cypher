// The change log after the sequence number a read model has applied, oldest first (index on
// seq). $after, $limit.
OPTIONAL MATCH (c:GraphChange)
WHERE c.seq > $after
WITH c ORDER BY c.seq LIMIT $limit
RETURN collect(CASE WHEN c IS NULL THEN null ELSE {seq: c.seq, kind: c.kind, keys: c.keys,
                                               images: c.images, pairs: c.pairs} END) AS changes
