// What a clustering run starts from: images, images without a community, SIMILAR pairs, and
// pairs whose weight modularity cannot use (missing or negative).
CALL () { MATCH (i:Image) RETURN count(i) AS images, count(i.community) AS assigned }
CALL () {
  MATCH (:Image)-[r:SIMILAR]->(:Image)
  RETURN count(r) AS pairs, count(CASE WHEN r.weight IS NULL OR r.weight < 0 THEN 1 END) AS invalid
}
RETURN images, images - assigned AS unassigned, pairs, invalid;
