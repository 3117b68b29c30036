"""Fashion-MNIST from its idx files (gzipped or not): ``--data-dir``, the Debian package, or torchvision."""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from pipeline.data.sources.base import ArraySource, DataError, register_source

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = (0.2860,), (0.3530,)
CLASS_NAMES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
REFETCH = "re-download or reinstall it"


def read_idx(path: Path) -> np.ndarray:
    """Parse one idx file (magic, dims, big-endian sizes, uint8 payload).

    A truncated or damaged file (gzip's EOFError, zlib.error, a payload shorter than its header
    says) raises a one-line :class:`DataError` naming it: click would turn a bare EOFError into "Aborted."."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{path} is truncated or damaged ({type(exc).__name__}: {exc}); {REFETCH}") from None
    if len(data) >= 3 and (data[0], data[1], data[2]) != (0, 0, 0x08):
        raise DataError(f"{path} is not an unsigned-byte idx file; {REFETCH}")
    ndim = data[3] if len(data) >= 4 else 0
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated or damaged ({len(data)} bytes, shorter than its header); {REFETCH}")
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    expected = int(np.prod(dims))
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != expected:
        raise DataError(f"{path} is truncated or damaged ({payload.size} data bytes, its header says {expected}); "
                        f"{REFETCH}")
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
            return _build(split, img, lab)
    if download and data_dir is not None:
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(data_dir), train=split == "train", download=True)
            raw = Path(data_dir) / "FashionMNIST" / "raw"
            img, lab = _find(raw, img_stem), _find(raw, lab_stem)
            if img and lab:
                return _build(split, img, lab)
        except Exception:  # no network: fall through to the one-line error
            pass
    where = ", ".join(str(d) for d in looked)
    raise DataError(f"Fashion-MNIST {split} not found (looked in {where}); install it with "
                    "`apt-get install dataset-fashion-mnist` or pass --data-dir DIR holding the idx files")


def _build(split: str, img: Path, lab: Path) -> ArraySource:
    """The split from its image and label idx files, which must hold 28x28 images and one label each."""
    images, labels = read_idx(img), read_idx(lab)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"Fashion-MNIST {split}: {img} holds images {images.shape} and {lab} labels {labels.shape}, "
                        "expected [N, 28, 28] and [N]; re-download or reinstall them")
    return ArraySource("fashion_mnist", split, images[..., None], labels.astype(np.int64), 10, MEAN, STD,
                       CLASS_NAMES)


@register_source("fashion_mnist")
def _read(name: str, split: str, data_dir: str | None, image_size: int, skip_corrupt: bool) -> ArraySource:
    return load_fashion_mnist(split, data_dir)
