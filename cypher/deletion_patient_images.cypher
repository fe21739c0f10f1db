// Keys of every image of one patient (by the HMAC patient key, never the raw id): through the
// :Patient node, and any image that carries the key without the link. Parameters: $patient_key.
CALL () {
  MATCH (:Patient {key: $patient_key})-[:HAS_IMAGE]->(i:Image)
  RETURN i.key AS key
  UNION
  MATCH (i:Image)
  WHERE i.patient_key = $patient_key
  RETURN i.key AS key
}
RETURN collect(key) AS keys;
