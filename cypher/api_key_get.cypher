// One API key by id, for verifying a presented token.
MATCH (k:ApiKey {id: $id})
RETURN k.id AS id, k.name AS name, k.scopes AS scopes, k.token_sha256 AS token_sha256,
       k.revoked AS revoked
