// Replaces images' clear source paths by their sealed form. Parameters: $rows [{key, source}].
UNWIND $rows AS row
MATCH (i:Image {key: row.key})
SET i.source = row.source
