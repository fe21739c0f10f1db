// The images an evaluation can use as queries: stored with an embedding and known findings
// (findings = [] is a known "No Finding"; null = never labelled), plus how many are unlabelled.
CALL () {
  MATCH (i:Image)
  WHERE i.embedding IS NOT NULL AND i.findings IS NOT NULL
  RETURN collect([i.key, i.findings, i.patient_key]) AS labelled
}
CALL () {
  MATCH (i:Image)
  WHERE i.findings IS NULL
  RETURN count(i) AS unlabelled
}
RETURN labelled, unlabelled
