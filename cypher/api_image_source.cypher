// Where an image's file was ingested from, sealed (services/privacy.py), and its modality
// (for thumbnails, the file download and its neutral name). Parameters: $key.
MATCH (i:Image {key: $key})
RETURN i.source AS source, i.modality AS modality
