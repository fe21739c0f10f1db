// QIDO-RS instances (services/api/blueprints/dicomweb.py): images with pseudonymous DICOM UIDs,
// matched on the given keys (null = any), in a stable order, one page.
// $study, $series, $sop, $modality: string or null; $offset, $limit: integers.
MATCH (i:Image)
WHERE i.dicom_sop_uid IS NOT NULL
  AND ($sop IS NULL OR i.dicom_sop_uid = $sop)
  AND ($study IS NULL OR i.dicom_study_uid = $study)
  AND ($series IS NULL OR i.dicom_series_uid = $series)
  AND ($modality IS NULL OR i.modality = $modality)
RETURN i.key AS key, i.dicom_study_uid AS study, i.dicom_series_uid AS series,
       i.dicom_sop_uid AS sop, i.modality AS modality, i.height AS rows, i.width AS columns
ORDER BY study, series, sop
SKIP $offset LIMIT $limit
