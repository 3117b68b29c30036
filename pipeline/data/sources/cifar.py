"""CIFAR-10 / CIFAR-100 readers for the official "python version" pickles.

Layout read (as extracted from the tarballs at https://www.cs.toronto.edu/~kriz/cifar.html):
``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` and
``cifar-100-python/{train, test, meta}``. The files are Python 2 pickles, loaded through
:func:`safe_load` with ``encoding="bytes"``, so keys are normally ``b'data'``; str keys are
accepted too. Images are stored ``[N, 3072]`` row-major CHW and returned ``[N, 32, 32, 3]``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.data.sources.base import ArraySource, DataError, register_source
from pipeline.data.sources.safe_pickle import safe_load

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_DOWNLOAD = "download the python version from https://www.cs.toronto.edu/~kriz/cifar.html and extract it"

# Per dataset: extracted directory name, files per split, meta file, label key, class-name key.
_LAYOUT: dict[str, dict[str, Any]] = {
    "cifar10": {
        "dir": "cifar-10-batches-py",
        "files": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        "meta": "batches.meta",
        "label_key": "labels",
        "names_key": "label_names",
        "num_classes": 10,
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
    },
    "cifar100": {
        "dir": "cifar-100-python",
        "files": {"train": ["train"], "test": ["test"]},
        "meta": "meta",
        "label_key": "fine_labels",
        "names_key": "fine_label_names",
        "num_classes": 100,
        "mean": CIFAR100_MEAN,
        "std": CIFAR100_STD,
    },
}


def _get(d: Any, key: str, path: Path) -> Any:
    """``d[key]`` trying the bytes key (Python 2 pickle loaded as bytes) and then the str key."""
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(d).__name__}")
    for k in (key.encode("ascii"), key):
        if k in d:
            return d[k]
    raise DataError(f"{path}: missing key '{key}' (not a CIFAR python batch?)")


def _dataset_dir(root: str | Path, dataset: str) -> Path:
    """The extracted CIFAR directory, given it or its parent; DataError if absent."""
    layout = _LAYOUT[dataset]
    r = Path(root).expanduser()
    candidates = [r / layout["dir"], r]
    for c in candidates:
        if (c / layout["meta"]).is_file():
            return c
    raise DataError(f"{dataset}: no {layout['dir']}/{layout['meta']} under {r} "
                    f"(looked at {candidates[0]} and {r}); {_DOWNLOAD} into {r}")


def _check_args(dataset: str, split: str) -> None:
    if dataset not in _LAYOUT:
        raise DataError(f"unknown CIFAR dataset {dataset!r}; expected one of {sorted(_LAYOUT)}")
    if split not in ("train", "test"):
        raise DataError(f"{dataset}: unknown split {split!r}; expected 'train' or 'test'")


def _load_batches(directory: Path, dataset: str, split: str, keys: tuple[str, ...]) -> dict[str, list[Any]]:
    """Read every batch file of a split and collect the values under ``keys``."""
    out: dict[str, list[Any]] = {k: [] for k in keys}
    for name in _LAYOUT[dataset]["files"][split]:
        path = directory / name
        if not path.is_file():
            raise DataError(f"{dataset}: missing {path}; {_DOWNLOAD} again")
        batch = safe_load(path, encoding="bytes")
        for k in keys:
            out[k].append(_get(batch, k, path))
    return out


def _class_names(directory: Path, dataset: str) -> list[str]:
    layout = _LAYOUT[dataset]
    path = directory / layout["meta"]
    names = _get(safe_load(path, encoding="bytes"), layout["names_key"], path)
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def load_cifar(root: str | Path, dataset: Literal["cifar10", "cifar100"] = "cifar100",
               split: Literal["train", "test"] = "train") -> ArraySource:
    """Load a CIFAR split as uint8 ``[N, 32, 32, 3]`` images and int64 labels (fine labels for CIFAR-100).

    ``root`` is the directory holding ``cifar-100-python/`` (or ``cifar-10-batches-py/``) or
    that directory itself.
    """
    _check_args(dataset, split)
    layout = _LAYOUT[dataset]
    directory = _dataset_dir(root, dataset)
    cols = _load_batches(directory, dataset, split, ("data", layout["label_key"]))
    images_parts: list[np.ndarray] = []
    for raw in cols["data"]:
        arr = np.asarray(raw)
        if arr.ndim != 2 or arr.shape[1] != 3 * 32 * 32:
            raise DataError(f"{dataset}/{split} in {directory}: 'data' has shape {arr.shape}, expected [N, 3072]; "
                            f"{_DOWNLOAD} again")
        if arr.dtype != np.uint8:
            if arr.size and (arr.min() < 0 or arr.max() > 255):
                raise DataError(f"{dataset}/{split} in {directory}: pixel values outside 0..255")
            arr = arr.astype(np.uint8)
        images_parts.append(arr)
    data = np.concatenate(images_parts, axis=0)
    # Each row is 1024 red, 1024 green, 1024 blue values, each channel row-major 32x32.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    labels = np.concatenate([np.asarray(lab, dtype=np.int64).reshape(-1) for lab in cols[layout["label_key"]]])
    if len(labels) != len(images):
        raise DataError(f"{dataset}/{split} in {directory}: {len(images)} images but {len(labels)} labels; "
                        f"{_DOWNLOAD} again")
    n_cls = layout["num_classes"]
    if labels.size and (labels.min() < 0 or labels.max() >= n_cls):
        raise DataError(f"{dataset}/{split} in {directory}: labels outside 0..{n_cls - 1}")
    names = _class_names(directory, dataset)
    if len(names) != n_cls:
        raise DataError(f"{dataset} in {directory}: meta lists {len(names)} class names, expected {n_cls}")
    return ArraySource(dataset, split, images, labels, n_cls, layout["mean"], layout["std"], names)


def cifar100_coarse_labels(root: str | Path, split: Literal["train", "test"] = "train") -> np.ndarray:
    """Per-sample CIFAR-100 superclass labels (0..19), aligned with :func:`load_cifar`'s samples."""
    _check_args("cifar100", split)
    directory = _dataset_dir(root, "cifar100")
    cols = _load_batches(directory, "cifar100", split, ("coarse_labels",))
    coarse = np.concatenate([np.asarray(c, dtype=np.int64).reshape(-1) for c in cols["coarse_labels"]])
    if coarse.size and (coarse.min() < 0 or coarse.max() >= 20):
        raise DataError(f"cifar100/{split} in {directory}: coarse labels outside 0..19")
    return coarse


def cifar100_coarse_of_fine(root: str | Path) -> np.ndarray:
    """The superclass of each of the 100 fine classes, read from the train split (shape ``[100]``).

    This is the mapping :func:`pipeline.data.sources.label_noise.asym_cifar100_map` needs.
    """
    directory = _dataset_dir(root, "cifar100")
    cols = _load_batches(directory, "cifar100", "train", ("fine_labels", "coarse_labels"))
    fine = np.concatenate([np.asarray(c, dtype=np.int64).reshape(-1) for c in cols["fine_labels"]])
    coarse = np.concatenate([np.asarray(c, dtype=np.int64).reshape(-1) for c in cols["coarse_labels"]])
    out = np.full(100, -1, dtype=np.int64)
    for f in np.unique(fine):
        cs = np.unique(coarse[fine == f])
        if len(cs) != 1:
            raise DataError(f"cifar100 in {directory}: fine class {f} has several superclasses {cs.tolist()}")
        out[f] = cs[0]
    if (out < 0).any():
        missing = np.flatnonzero(out < 0).tolist()
        raise DataError(f"cifar100 in {directory}: train split lacks fine classes {missing[:10]}")
    return out


@register_source("cifar10", "cifar100", needs_dir="the folder holding the python-version pickles")
def _read(name: str, split: str, data_dir: str | None, image_size: int, skip_corrupt: bool) -> ArraySource:
    return load_cifar(str(data_dir), name, split)  # type: ignore[arg-type]
