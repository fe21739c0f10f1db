"""Evaluation of the encoder and the search strategies: the paper's metrics, baselines and
patient-bootstrap intervals (``medgraph evaluate``). Nothing here is on the serving path."""
