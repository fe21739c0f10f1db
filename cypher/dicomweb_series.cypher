// QIDO-RS series: the series of the images with pseudonymous DICOM UIDs matching the keys.
// $study, $series, $sop, $modality: string or null; $offset, $limit: integers.
MATCH (i:Image)
WHERE i.dicom_sop_uid IS NOT NULL
  AND ($sop IS NULL OR i.dicom_sop_uid = $sop)
  AND ($study IS NULL OR i.dicom_study_uid = $study)
  AND ($series IS NULL OR i.dicom_series_uid = $series)
  AND ($modality IS NULL OR i.modality = $modality)
WITH i.dicom_study_uid AS study, i.dicom_series_uid AS series,
     collect(DISTINCT i.modality) AS modalities, count(i) AS instances
RETURN study, series, modalities[0] AS modality, instances
ORDER BY study, series
SKIP $offset LIMIT $limit
