// Every image key (isolated images included), as one list (one record: fast to read).
MATCH (i:Image)
RETURN collect(i.key) AS keys;
