// A page of the images of one community. Parameters: $id, $skip, $limit.
MATCH (i:Image {community: $id})
RETURN i.key AS key, i.source AS source, i.findings AS findings, i.patient_key AS patient_key,
       i.ingested_at AS ingested_at
ORDER BY key
SKIP $skip
LIMIT $limit;
