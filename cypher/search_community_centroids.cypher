// The stored centroid of every community (services/communities/statistics.py): the read model
// lays communities with near centroids next to each other (services/retrieval/layout.py).
MATCH (c:Community)
WHERE c.centroid IS NOT NULL
RETURN c.id AS community, c.centroid AS centroid
