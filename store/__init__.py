"""The soft-label store: Zarr arrays of cached teacher logits and view parameters (no torch).

``store.protocol`` says what a store offers, ``store.backends`` opens, creates and locks one by its
path (``open_store``, ``create_store``, ``store_lock``), ``store.lock`` is the writer lock.
"""
