// Creates or updates :Community nodes. Parameters: $rows = [{id, properties}].
UNWIND $rows AS row
MERGE (c:Community {id: row.id})
SET c += row.properties;
