"""miniImageNet reader for the ``miniImageNet_category_split_{split}.pickle`` files.

These are the Python 2 pickles distributed with MetaOptNet/RFS: a dict with ``data``
(uint8 ``[N, 84, 84, 3]``), ``labels`` (global class ids: train 0..63, val 64..79,
test 80..99) and usually ``catname2label`` (WordNet id -> global id). They are loaded with
``encoding="latin1"`` through :func:`safe_load`. Labels are remapped to ``0..n-1`` in ascending
order of the original ids, which are kept as strings in ``class_names``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.sources.base import ArraySource, DataError, register_source
from pipeline.data.sources.safe_pickle import safe_load

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MINI_IMAGENET_SPLITS = ("train_phase_train", "train_phase_val", "val", "test")


def _get(d: dict[Any, Any], key: str) -> Any:
    """``d[key]`` with a str key or, if the file was read with bytes keys, its bytes form."""
    for k in (key, key.encode("ascii")):
        if k in d:
            return d[k]
    raise KeyError(key)


def mini_imagenet_path(root: str | Path, split: str) -> Path:
    """Where the pickle for ``split`` is expected under ``root``."""
    return Path(root).expanduser() / f"miniImageNet_category_split_{split}.pickle"


def load_mini_imagenet(root: str | Path, split: str) -> ArraySource:
    """Load one miniImageNet split as uint8 ``[N, 84, 84, 3]`` images with contiguous labels."""
    if split not in MINI_IMAGENET_SPLITS:
        raise DataError(f"mini_imagenet: unknown split {split!r}; expected one of {list(MINI_IMAGENET_SPLITS)}")
    path = mini_imagenet_path(root, split)
    if not path.is_file():
        raise DataError(f"mini_imagenet: no file at {path}; place the miniImageNet_category_split_*.pickle "
                        "files (as distributed with MetaOptNet/RFS) in that directory")
    obj = safe_load(path, encoding="latin1")
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    try:
        data = _get(obj, "data")
        raw_labels = _get(obj, "labels")
    except KeyError as exc:
        raise DataError(f"{path}: missing key '{exc.args[0]}' (expected 'data' and 'labels')") from None

    images = np.asarray(data)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"{path}: 'data' has shape {images.shape}, expected [N, H, W, 3]")
    if images.dtype != np.uint8:
        if images.size and (images.min() < 0 or images.max() > 255):
            raise DataError(f"{path}: 'data' is {images.dtype} with values outside 0..255, expected uint8 pixels")
        images = images.astype(np.uint8)
    try:
        orig = np.asarray(raw_labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"{path}: 'labels' is not a list of integers") from None
    if len(orig) != len(images):
        raise DataError(f"{path}: {len(images)} images but {len(orig)} labels")
    # catname2label (WordNet id -> global id) is optional metadata; only its type is checked.
    try:
        catnames = _get(obj, "catname2label")
    except KeyError:
        catnames = None
    if catnames is not None and not isinstance(catnames, dict):
        raise DataError(f"{path}: 'catname2label' is {type(catnames).__name__}, expected a dict")

    ids, labels = np.unique(orig, return_inverse=True)
    return ArraySource("mini_imagenet", split, np.ascontiguousarray(images), labels.reshape(-1).astype(np.int64),
                       int(len(ids)), IMAGENET_MEAN, IMAGENET_STD, [str(int(i)) for i in ids])


@register_source("mini_imagenet", needs_dir="the folder holding the category-split pickles")
def _read(name: str, split: str, data_dir: str | None, image_size: int, skip_corrupt: bool) -> ArraySource:
    return load_mini_imagenet(str(data_dir), split)
