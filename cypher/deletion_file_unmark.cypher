// A pending file removal is done. Parameters: $keys.
UNWIND $keys AS key
MATCH (f:FileDeletion {key: key})
DELETE f;
