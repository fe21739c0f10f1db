"""Retrieval: the paper's region growing (Algorithm 1) and the exact and vector-index baselines."""
