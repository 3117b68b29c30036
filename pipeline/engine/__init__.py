"""The run engine every stage shares: the run loop, run directories, checkpoints, divergence checks, trackers and process setup."""
