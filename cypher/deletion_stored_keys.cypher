// Which of $keys are stored images (a cheap look before any lock is taken).
UNWIND $keys AS key
MATCH (i:Image {key: key})
RETURN collect(i.key) AS keys;
