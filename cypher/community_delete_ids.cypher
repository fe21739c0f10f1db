// Removes communities that have no member left. Parameters: $ids.
UNWIND $ids AS id
MATCH (c:Community {id: id})
DELETE c;
