// Every stored embedding with the properties the filters need, its community and its predicted
// findings (for re-ranking; null when not stored), streamed into the in-process read model.
MATCH (i:Image)
WHERE i.embedding IS NOT NULL
RETURN i.key AS key, i.embedding AS embedding, i.patient_key AS patient_key,
       i.findings AS findings, i.modality AS modality, i.community AS community,
       i.finding_probabilities AS finding_probabilities
