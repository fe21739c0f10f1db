"""Background workers of medgraph."""

import os

# OpenMP threads that spin while they wait make torch 5-20x slower on a CPU shared with other
# busy processes (measured on the 2-core dev machine: 1 s vs 10 s per training batch, 16 vs
# 0.8 images/s for inference). libgomp reads this once, when torch is first imported, so it is
# set here, before any worker imports torch; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
