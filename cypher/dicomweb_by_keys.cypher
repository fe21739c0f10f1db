// The pseudonymous DICOM UIDs of images by key (null UIDs for PNG/JPEG images).
// $keys: [string]
UNWIND $keys AS key
MATCH (i:Image {key: key})
RETURN i.key AS key, i.dicom_study_uid AS study, i.dicom_series_uid AS series,
       i.dicom_sop_uid AS sop, i.modality AS modality, i.height AS rows, i.width AS columns
