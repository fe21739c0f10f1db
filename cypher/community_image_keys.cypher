// Every image key (isolated images included), one row each.
MATCH (i:Image)
RETURN i.key AS key;
