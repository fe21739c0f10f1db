// Each image's SIMILAR neighbours (keys) and its community. Parameters: $keys.
UNWIND $keys AS key
MATCH (i:Image {key: key})
RETURN i.key AS key, i.community AS community,
       COLLECT { MATCH (i)-[:SIMILAR]-(j:Image) RETURN j.key } AS neighbours;
