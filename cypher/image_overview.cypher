// Every image with its findings, community, patient key and source, ordered by key: for tests
// and checks that compare what a client shows with what is stored (the API never returns the
// patient key or the source path).
MATCH (i:Image)
RETURN i.key AS key, i.findings AS findings, i.community AS community,
       i.patient_key AS patient_key, i.source AS source
ORDER BY key;
