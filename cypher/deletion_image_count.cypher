// Images stored (the count store answers it without a scan).
MATCH (i:Image)
RETURN count(i) AS images;
