// Number of SIMILAR relationships (each unordered pair once).
MATCH ()-[edge:SIMILAR]->()
RETURN count(edge) AS edges
