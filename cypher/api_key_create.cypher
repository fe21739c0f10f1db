// Stores a new API key; only the SHA-256 of the token is kept.
CREATE (k:ApiKey {id: $id, name: $name, scopes: $scopes, token_sha256: $token_sha256,
                  created_at: datetime(), revoked: false})
RETURN k.id AS id
