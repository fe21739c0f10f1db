// Audit records, newest first. Parameters: $skip, $limit, $action (null = every action).
MATCH (a:AuditRecord)
WHERE $action IS NULL OR a.action = $action
WITH a ORDER BY a.at DESC, a.id
WITH collect(a) AS records
RETURN size(records) AS total,
       [a IN records[$skip..$skip + $limit] |
         {id: a.id, at: toString(a.at), action: a.action, actor: a.actor, images: a.images,
          key_hashes: a.key_hashes}] AS records;
