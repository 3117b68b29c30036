"""Class-disjoint subsets of a dataset (e.g. base vs novel classes for few-shot transfer)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.data.sources.base import ArraySource, DataError


def split_classes(source: ArraySource, classes: Sequence[int], split: str) -> ArraySource:
    """Keep only samples whose label is in ``classes`` and relabel ``classes[i]`` as ``i``.

    The order of ``classes`` defines the new label ids, so the same call always yields the
    same labelling; ``class_names`` (if any) follow that order. Sample order is preserved.
    """
    cls = [int(c) for c in classes]
    where = f"{source.name}/{source.split}"
    if not cls:
        raise DataError(f"{where}: split_classes needs at least one class")
    if len(set(cls)) != len(cls):
        raise DataError(f"{where}: split_classes got repeated classes {cls}")
    bad = [c for c in cls if not 0 <= c < source.num_classes]
    if bad:
        raise DataError(f"{where}: classes {bad} outside 0..{source.num_classes - 1}")
    lookup = np.full(source.num_classes, -1, dtype=np.int64)
    lookup[np.asarray(cls, dtype=np.int64)] = np.arange(len(cls), dtype=np.int64)
    new = lookup[source.labels]
    keep = np.flatnonzero(new >= 0)
    names = [source.class_names[c] for c in cls] if source.class_names is not None else None
    return ArraySource(source.name, split, source.images[keep], new[keep], len(cls),
                       source.mean, source.std, names)
