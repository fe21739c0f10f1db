"""medgraph's online side: settings, graph store access, local stack, retrieval and the API."""

import os

# torch's OpenMP threads spin while waiting; on a small shared machine that makes them 5-20x
# slower whenever other processes are busy. It only counts before torch is first imported, and
# every `medgraph` command imports this package first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
