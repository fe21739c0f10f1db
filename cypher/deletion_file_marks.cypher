// Pending file removals, and whether an image with the key exists again (re-ingested since:
// then the file is kept).
MATCH (f:FileDeletion)
RETURN f.key AS key, f.path AS path, EXISTS { MATCH (:Image {key: f.key}) } AS stored;
