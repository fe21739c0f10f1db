// An image's current findings and community, before a relabel. Parameters: $key.
MATCH (i:Image {key: $key})
RETURN i.key AS key, i.findings AS findings, i.community AS community;
