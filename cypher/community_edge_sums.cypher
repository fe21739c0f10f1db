// Per community: sigma_tot (sum of its members' weighted degrees) and internal weight (each
// pair inside once), over the SIMILAR pairs whose two images both have a community. Matched
// undirected, each pair is seen from both ends: once for each end's degree, twice inside.
MATCH (a:Image)-[r:SIMILAR]-(b:Image)
WHERE a.community IS NOT NULL AND b.community IS NOT NULL
RETURN a.community AS community, sum(r.weight) AS sigma_tot,
       sum(CASE WHEN a.community = b.community THEN r.weight ELSE 0.0 END) / 2.0
         AS internal_weight;
