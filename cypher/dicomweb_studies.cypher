// QIDO-RS studies: the studies of the images with pseudonymous DICOM UIDs matching the keys.
// $study, $series, $sop, $modality: string or null; $offset, $limit: integers.
MATCH (i:Image)
WHERE i.dicom_sop_uid IS NOT NULL
  AND ($sop IS NULL OR i.dicom_sop_uid = $sop)
  AND ($study IS NULL OR i.dicom_study_uid = $study)
  AND ($series IS NULL OR i.dicom_series_uid = $series)
  AND ($modality IS NULL OR i.modality = $modality)
WITH i.dicom_study_uid AS study, collect(DISTINCT i.modality) AS modalities,
     count(DISTINCT i.dicom_series_uid) AS series, count(i) AS instances
RETURN study, modalities, series, instances
ORDER BY study
SKIP $offset LIMIT $limit
