"""medgraph's online side: settings, graph store access, local stack, retrieval and the API."""
