// Files of deleted images that are to be removed once the deletion has committed (uploads kept
// with add=true). Written in the deleting transaction, removed when the file is gone, so a
// crash between the commit and the removal is finished by the next deletion. $rows: [{key, path}].
UNWIND $rows AS row
MERGE (f:FileDeletion {key: row.key})
SET f.path = row.path, f.requested_at = datetime();
