"""The soft-label store: Zarr arrays of cached teacher logits and view parameters (no torch)."""
