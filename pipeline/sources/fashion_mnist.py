"""Fashion-MNIST from its idx files (gzipped or not): ``--data-dir``, the Debian package, or torchvision."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from pipeline.sources.base import ArraySource, DataError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = (0.2860,), (0.3530,)
CLASS_NAMES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: Path) -> np.ndarray:
    """Parse one idx file (magic, dims, big-endian sizes, uint8 payload)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    expected = int(np.prod(dims))
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != expected:
        raise DataError(f"{path} is truncated: {payload.size} bytes of {expected}")
    return payload.reshape(tuple(dims))


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _candidates(data_dir: str | os.PathLike | None) -> list[Path]:
    if data_dir is not None:
        d = Path(data_dir)
        return [d, d / "FashionMNIST" / "raw", d / "fashion-mnist"]
    return [DEBIAN_DIR]


def load_fashion_mnist(split: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> ArraySource:
    """Load a split ("train" 60k, "test" 10k) as an :class:`ArraySource` of ``[N, 28, 28, 1]`` uint8."""
    if split not in _FILES:
        raise DataError(f"fashion_mnist has splits train, test; got {split!r}")
    img_stem, lab_stem = _FILES[split]
    looked = _candidates(data_dir)
    for d in looked:
        img, lab = _find(d, img_stem), _find(d, lab_stem)
        if img and lab:
            return _build(split, read_idx(img), read_idx(lab))
    if download and data_dir is not None:
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(data_dir), train=split == "train", download=True)
            raw = Path(data_dir) / "FashionMNIST" / "raw"
            img, lab = _find(raw, img_stem), _find(raw, lab_stem)
            if img and lab:
                return _build(split, read_idx(img), read_idx(lab))
        except Exception:  # no network: fall through to the one-line error
            pass
    where = ", ".join(str(d) for d in looked)
    raise DataError(f"Fashion-MNIST {split} not found (looked in {where}); install it with "
                    "`apt-get install dataset-fashion-mnist` or pass --data-dir DIR holding the idx files")


def _build(split: str, images: np.ndarray, labels: np.ndarray) -> ArraySource:
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DataError(f"Fashion-MNIST {split}: unexpected shapes {images.shape} / {labels.shape}")
    return ArraySource("fashion_mnist", split, images[..., None], labels.astype(np.int64), 10, MEAN, STD,
                       CLASS_NAMES)
