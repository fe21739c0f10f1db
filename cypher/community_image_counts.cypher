// Images, and images without a community (ingested since the last run, not yet assigned).
MATCH (i:Image)
RETURN count(i) AS images, count(i) - count(i.community) AS unassigned;
