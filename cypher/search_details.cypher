// Community and findings of a list of images, in the order given (for ranked hits).
// Parameters: $keys.
UNWIND range(0, size($keys) - 1) AS position
MATCH (i:Image {key: $keys[position]})
RETURN i.key AS key, i.community AS community, i.findings AS findings
ORDER BY position
