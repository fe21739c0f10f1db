// Deletes the :Community nodes of communities that no longer exist. Parameters: $ids (kept).
MATCH (c:Community)
WHERE NOT c.id IN $ids
DETACH DELETE c;
