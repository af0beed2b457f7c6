"""Experiment drivers (reproduction of the paper's tables at CPU scale)."""
