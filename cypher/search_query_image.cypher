// A stored image used as the query: its embedding and patient key (for same-patient exclusion).
// Parameters: $key.
MATCH (i:Image {key: $key})
RETURN i.embedding AS embedding, i.patient_key AS patient_key
