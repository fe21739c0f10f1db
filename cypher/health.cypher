// Readiness probe: the plugins the platform relies on answer.
RETURN apoc.version() AS apoc, gds.version() AS gds
