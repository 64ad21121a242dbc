"""Analyses on top of the core: compare, the demo, the retraining loop, tuning."""
