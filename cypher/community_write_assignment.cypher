// Sets the community of images. Parameters: $rows = [{key, community}].
UNWIND $rows AS row
MATCH (i:Image {key: row.key})
SET i.community = row.community;
