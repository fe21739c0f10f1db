// Every clustered image's community, findings and embedding, for sizes, finding histograms
// and centroids in one pass.
MATCH (i:Image)
WHERE i.community IS NOT NULL
RETURN i.community AS community, i.findings AS findings, i.embedding AS embedding;
