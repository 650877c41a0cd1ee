"""Inference runs: inputs from data sets, the live fabric loop, and what a run reports."""
