// Every API key, without its hash.
MATCH (k:ApiKey)
RETURN k.id AS id, k.name AS name, k.scopes AS scopes, k.revoked AS revoked,
       toString(k.created_at) AS created_at
ORDER BY k.created_at
