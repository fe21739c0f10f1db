// One audit record per delete or relabel, written in the same transaction. It names the actor
// (API key id or "cli") and holds salted hashes of the image keys: never a patient id, a patient
// key or a file name. Parameters: $id, $action, $actor, $images, $key_hashes, $generation.
CREATE (a:AuditRecord {id: $id, at: datetime(), action: $action, actor: $actor,
                       images: $images, key_hashes: $key_hashes, generation: $generation});
