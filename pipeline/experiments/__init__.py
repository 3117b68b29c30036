"""Experiments over many runs: sweeps, reports, statistics and the embedded demos."""
