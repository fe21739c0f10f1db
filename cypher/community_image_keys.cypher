// Every image key (isolated images included), as one list.
MATCH (i:Image)
RETURN collect(i.key) AS keys;
