// Revokes an API key; returns nothing when the id is unknown.
MATCH (k:ApiKey {id: $id})
SET k.revoked = true, k.revoked_at = datetime()
RETURN k.id AS id
