// Every API key that is not revoked, with its hash: each API process keeps this in memory
// (refreshed every api_key_cache_s), so checking a presented token never costs a lookup of its
// own and failed guesses cannot load the database.
MATCH (k:ApiKey)
WHERE NOT coalesce(k.revoked, false)
RETURN k.id AS id, k.name AS name, k.scopes AS scopes, k.token_sha256 AS token_sha256
