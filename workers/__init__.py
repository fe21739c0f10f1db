"""Background workers of medgraph."""
